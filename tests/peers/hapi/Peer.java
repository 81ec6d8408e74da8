// The independent HL7 v2 peer for pacsflow's tests and benchmarks: HAPI HL7v2 2.6.0 on both ends of MLLP.
//
// Single-file program (Java 17 source launcher), jars fetched by `make hl7-peer`:
//   java -cp "$LIB/*" Peer.java receive --port P --out FILE [--fail-first N]
//   java -cp "$LIB/*" Peer.java send --host H --port P FILE...
//   java -cp "$LIB/*" Peer.java sendmany --count N --host H --port P FILE
//
// receive: HAPI's MLLP server (HapiContext.newServer) on 127.0.0.1. Each message is parsed by HAPI's PipeParser
//   with HAPI's default validation, then its structure is checked against the HAPI model of its type and version
//   (segments the model has no place for, required segments missing). Answers AA, AE with an ERR naming the
//   problem, or AR for a type/version HAPI has no model for. Appends one JSON line per message to FILE before
//   the ACK goes out, so a test that has its ACK can read the line. Prints "READY <port>" once listening.
//   --fail-first N answers AE ("forced failure") to the first N messages that would otherwise get AA.
// send: one MLLP connection (HAPI Connection/Initiator); each ER7 file is parsed (no validation: it is sent as
//   written) and sent; one JSON line per ACK: {"file", "ack", "controlId", "error"}.
// sendmany: one connection, FILE sent COUNT times as distinct orders (MSH-10, OBR-18 and IPC-1 made unique);
//   prints one JSON line with msgs/s.
//
// MLLP reads and writes honour MSH-18 (UTF-8, 8859/1, ASCII). TCP_NODELAY is on for every socket.
//
// --tls true (any command): MLLP over TLS with the JDK's own TLS (JSSE). Keys and trusted CAs come from the standard
//   javax.net.ssl.keyStore / javax.net.ssl.trustStore system properties (PKCS#12 files the test makes); the
//   receiver asks for no client certificate, the sender presents its key store's when the server asks for one.

import ca.uhn.hl7v2.AcknowledgmentCode;
import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.ErrorCode;
import ca.uhn.hl7v2.HL7Exception;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.Connection;
import ca.uhn.hl7v2.app.HL7Service;
import ca.uhn.hl7v2.app.Initiator;
import ca.uhn.hl7v2.llp.MinLowerLayerProtocol;
import ca.uhn.hl7v2.model.AbstractGroup;
import ca.uhn.hl7v2.model.GenericMessage;
import ca.uhn.hl7v2.model.Group;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.model.Segment;
import ca.uhn.hl7v2.model.Structure;
import ca.uhn.hl7v2.model.Type;
import ca.uhn.hl7v2.parser.PipeParser;
import ca.uhn.hl7v2.preparser.PreParser;
import ca.uhn.hl7v2.protocol.ReceivingApplication;
import ca.uhn.hl7v2.protocol.ReceivingApplicationExceptionHandler;
import ca.uhn.hl7v2.util.StandardSocketFactory;
import ca.uhn.hl7v2.util.Terser;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

public class Peer {

    /** MLLP over TLS (--tls true). */
    static boolean tls = false;

    public static void main(String[] args) throws Exception {
        // HAPI logs every connection at INFO; the tests read stdout and the JSON lines, not the log.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel",
                System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn"));
        if (args.length == 0) usage();
        Map<String, String> opts = new HashMap<>();
        List<String> files = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            if (args[i].startsWith("--")) {
                if (i + 1 >= args.length) usage();
                opts.put(args[i].substring(2), args[++i]);
            } else {
                files.add(args[i]);
            }
        }
        tls = Boolean.parseBoolean(opts.getOrDefault("tls", "false"));
        switch (args[0]) {
            case "receive" -> receive(Integer.parseInt(need(opts, "port")), Path.of(need(opts, "out")),
                    Integer.parseInt(opts.getOrDefault("fail-first", "0")));
            case "send" -> send(opts.getOrDefault("host", "127.0.0.1"), Integer.parseInt(need(opts, "port")), files,
                    Integer.parseInt(opts.getOrDefault("timeout", "30")));
            case "sendmany" -> sendMany(opts.getOrDefault("host", "127.0.0.1"), Integer.parseInt(need(opts, "port")),
                    Integer.parseInt(need(opts, "count")), files);
            default -> usage();
        }
    }

    static String need(Map<String, String> opts, String key) {
        String v = opts.get(key);
        if (v == null) {
            System.err.println("missing --" + key);
            usage();
        }
        return v;
    }

    static void usage() {
        System.err.println("usage: Peer receive --port P --out FILE [--fail-first N] [--tls true]\n"
                + "       Peer send [--host H] --port P [--timeout S] [--tls true] FILE...\n"
                + "       Peer sendmany [--host H] --port P --count N [--tls true] FILE");
        System.exit(2);
    }

    /** Loopback only, TCP_NODELAY on; HAPI binds InetSocketAddress(port), i.e. every interface, otherwise. */
    static final class LoopbackSockets extends StandardSocketFactory {
        @Override
        public ServerSocket createServerSocket() throws IOException {
            return new ServerSocket() {
                @Override
                public void bind(SocketAddress endpoint, int backlog) throws IOException {
                    int port = ((InetSocketAddress) endpoint).getPort();
                    super.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), backlog);
                }
            };
        }

        /**
         * HAPI would bind an unbound SSLServerSocket to every interface: accept on loopback instead and run the
         * server side of TLS (JSSE, key from javax.net.ssl.keyStore) on each accepted socket.
         */
        @Override
        public ServerSocket createTlsServerSocket() throws IOException {
            return new ServerSocket() {
                @Override
                public void bind(SocketAddress endpoint, int backlog) throws IOException {
                    int port = ((InetSocketAddress) endpoint).getPort();
                    super.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), backlog);
                }

                @Override
                public Socket accept() throws IOException {
                    Socket plain = super.accept();
                    plain.setTcpNoDelay(true);
                    SSLSocket secure = (SSLSocket) ((SSLSocketFactory) SSLSocketFactory.getDefault()).createSocket(
                            plain, plain.getInetAddress().getHostAddress(), plain.getPort(), true);
                    secure.setUseClientMode(false);
                    return secure;
                }
            };
        }

        @Override
        public Socket createSocket() throws IOException {
            Socket s = super.createSocket();
            s.setTcpNoDelay(true);
            return s;
        }

        @Override
        public void configureNewAcceptedSocket(Socket s) throws SocketException {
            super.configureNewAcceptedSocket(s);
            s.setTcpNoDelay(true);
        }
    }

    static HapiContext context(boolean validating) {
        HapiContext ctx = new DefaultHapiContext();
        ctx.setLowerLayerProtocol(new MinLowerLayerProtocol(true));  // decode/encode by MSH-18
        ctx.setSocketFactory(new LoopbackSockets());
        ctx.setValidationContext(validating ? ValidationContextFactory.defaultValidation()
                : ValidationContextFactory.noValidation());
        return ctx;
    }

    // ---------------------------------------------------------------------------------------------- receive

    static void receive(int port, Path out, int failFirst) throws Exception {
        HapiContext ctx = context(true);
        Recorder recorder = new Recorder(out, failFirst);
        HL7Service server = ctx.newServer(port, tls);
        server.registerApplication(recorder);
        server.setExceptionHandler(recorder);
        Runtime.getRuntime().addShutdownHook(new Thread(server::stop));
        server.startAndWait();
        System.out.println("READY " + port);
        System.out.flush();
        Thread.currentThread().join();
    }

    /** Answers and records every message; also HAPI's exception handler, so unparseable ones are recorded too. */
    static final class Recorder implements ReceivingApplication<Message>, ReceivingApplicationExceptionHandler {
        private final Writer writer;
        private final AtomicInteger toFail;

        Recorder(Path out, int failFirst) throws IOException {
            this.writer = new OutputStreamWriter(new FileOutputStream(out.toFile(), true), StandardCharsets.UTF_8);
            this.toFail = new AtomicInteger(failFirst);
        }

        @Override
        public boolean canProcess(Message message) {
            return true;
        }

        @Override
        public Message processMessage(Message message, Map<String, Object> metadata) throws HL7Exception {
            Map<String, Object> rec = new LinkedHashMap<>();
            String code;
            String error = null;
            Message ack;
            try {
                String problem = structureProblem(message);
                if (message instanceof GenericMessage) {
                    code = "AR";
                    error = "HAPI has no model for this message type and version";
                    ack = message.generateACK(AcknowledgmentCode.AR,
                            new HL7Exception(error, ErrorCode.UNSUPPORTED_MESSAGE_TYPE));
                } else if (problem != null) {
                    code = "AE";
                    error = problem;
                    ack = message.generateACK(AcknowledgmentCode.AE,
                            new HL7Exception(problem, ErrorCode.SEGMENT_SEQUENCE_ERROR));
                } else if (toFail.getAndDecrement() > 0) {
                    code = "AE";
                    error = "forced failure (--fail-first)";
                    ack = message.generateACK(AcknowledgmentCode.AE,
                            new HL7Exception(error, ErrorCode.APPLICATION_INTERNAL_ERROR));
                } else {
                    code = "AA";
                    ack = message.generateACK();
                }
            } catch (IOException e) {
                throw new HL7Exception(e);
            }
            Terser t = new Terser(message);
            rec.put("controlId", t.get("/MSH-10"));
            rec.put("type", joinNonEmpty(t.get("/MSH-9-1"), t.get("/MSH-9-2"), t.get("/MSH-9-3")));
            rec.put("version", message.getVersion());
            rec.put("charset", t.get("/MSH-18"));
            rec.put("ack", code);
            rec.put("error", error);
            fields(message, rec);
            write(rec);
            return ack;
        }

        /** Called by HAPI when parsing (or the application) failed; HAPI already built the negative ACK. */
        @Override
        public String processException(String incoming, Map<String, Object> metadata, String outgoing,
                                       Exception e) {
            Map<String, Object> rec = new LinkedHashMap<>();
            String[] msh = {null, null, null};
            try {
                msh = PreParser.getFields(incoming, "MSH-10", "MSH-9", "MSH-12");
            } catch (HL7Exception | RuntimeException ignored) {
                // No usable MSH: recorded with nulls, which is what a test wants to see.
            }
            rec.put("controlId", msh[0]);
            rec.put("type", msh[1]);
            rec.put("version", msh[2]);
            rec.put("charset", null);
            String code = null;
            try {
                code = PreParser.getFields(outgoing, "MSA-1")[0];
            } catch (HL7Exception | RuntimeException ignored) {
                // HAPI could not build an ACK either: recorded as null.
            }
            rec.put("ack", code);
            rec.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
            try {
                write(rec);
            } catch (HL7Exception io) {
                throw new IllegalStateException(io);
            }
            return outgoing;
        }

        private synchronized void write(Map<String, Object> rec) throws HL7Exception {
            try {
                writer.write(Json.of(rec));
                writer.write('\n');
                writer.flush();
            } catch (IOException e) {
                throw new HL7Exception(e);
            }
        }
    }

    static String joinNonEmpty(String... parts) {
        List<String> kept = new ArrayList<>();
        for (String p : parts) if (p != null && !p.isEmpty()) kept.add(p);
        return String.join("^", kept);
    }

    /**
     * What is wrong with the message's structure against HAPI's model of its type and version, or null.
     * HAPI's parser is lenient: a segment with no place in the model becomes a "non-standard" segment, and a
     * required segment may simply be absent. Both are structure errors for a receiver that validates.
     */
    static String structureProblem(Group group) throws HL7Exception {
        if (group instanceof AbstractGroup ag && !(group instanceof GenericMessage)) {
            for (String name : ag.getNonStandardNames()) {
                // Z segments are the sender's own and may stand anywhere (HL7 v2 section 2.8.2).
                if (!name.startsWith("Z")) return "segment " + name + " not expected in " + group.getName();
            }
        }
        boolean hasChoice = false;
        for (String name : group.getNames()) hasChoice |= group.isChoiceElement(name);
        for (String name : group.getNames()) {
            Structure[] reps = group.getAll(name);
            boolean present = false;
            for (Structure s : reps) {
                if (!s.isEmpty()) present = true;
            }
            // In a choice group (ORM^O01's OBR | RQD | RXO ... detail) "required" belongs to one branch only.
            if (!present && group.isRequired(name) && !hasChoice) {
                return "required " + (group.isGroup(name) ? "group " : "segment ") + name + " missing in "
                        + group.getName();
            }
            if (group.isGroup(name)) {
                for (Structure s : reps) {
                    if (s.isEmpty()) continue;
                    String inner = structureProblem((Group) s);
                    if (inner != null) return inner;
                }
            }
        }
        return null;
    }

    /** The fields tests assert on: ORC-1, priority, OBR-4, OBR-18, OBR-31, every OBX-3/-5/-11, PID-5 decoded. */
    static void fields(Message message, Map<String, Object> rec) throws HL7Exception {
        List<Segment> segments = new ArrayList<>();
        collect(message, segments);
        Segment orc = first(segments, "ORC");
        Segment obr = first(segments, "OBR");
        Segment tq1 = first(segments, "TQ1");
        Segment pid = first(segments, "PID");
        rec.put("orc1", orc == null ? null : encoded(orc, 1));
        String priority = null;
        if (tq1 != null) priority = Terser.get(tq1, 9, 0, 1, 1);
        if (priority == null && orc != null) priority = Terser.get(orc, 7, 0, 6, 1);
        if (priority == null && obr != null) priority = Terser.get(obr, 27, 0, 6, 1);
        rec.put("priority", priority);
        rec.put("obr4", obr == null ? null : encoded(obr, 4));
        rec.put("obr4Text", obr == null ? null : Terser.get(obr, 4, 0, 2, 1));
        rec.put("obr18", obr == null ? null : Terser.get(obr, 18, 0, 1, 1));
        rec.put("obr31Text", obr == null ? null : Terser.get(obr, 31, 0, 2, 1));
        rec.put("patientFamily", pid == null ? null : Terser.get(pid, 5, 0, 1, 1));
        rec.put("patientGiven", pid == null ? null : Terser.get(pid, 5, 0, 2, 1));
        List<Map<String, Object>> obx = new ArrayList<>();
        for (Segment s : segments) {
            if (!s.getName().equals("OBX")) continue;
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("obx3", encoded(s, 3));
            row.put("obx5", encoded(s, 5));
            row.put("obx11", encoded(s, 11));
            obx.add(row);
        }
        rec.put("obx", obx);
    }

    static void collect(Group group, List<Segment> out) throws HL7Exception {
        for (String name : group.getNames()) {
            for (Structure s : group.getAll(name)) {
                if (s instanceof Segment seg) out.add(seg);
                else if (s instanceof Group g) collect(g, out);
            }
        }
    }

    static Segment first(List<Segment> segments, String name) {
        for (Segment s : segments) if (s.getName().equals(name)) return s;
        return null;
    }

    static String encoded(Segment s, int field) throws HL7Exception {
        Type[] reps = s.getField(field);
        if (reps.length == 0) return null;
        List<String> parts = new ArrayList<>();
        for (Type t : reps) parts.add(t.encode());
        return String.join("~", parts);
    }

    // ---------------------------------------------------------------------------------------------- send

    static Initiator connect(HapiContext ctx, String host, int port, int timeoutSeconds) throws HL7Exception {
        Connection conn = ctx.newClient(host, port, tls);
        Initiator init = conn.getInitiator();
        init.setTimeout(timeoutSeconds, TimeUnit.SECONDS);
        return init;
    }

    static Message read(PipeParser parser, String file) throws IOException, HL7Exception {
        // The file is in the character set its MSH-18 names (UTF-8 when it names none): read MSH-18 from a
        // byte-for-byte decoding first, as an MLLP receiver does.
        byte[] bytes = Files.readAllBytes(Path.of(file));
        String msh18 = PreParser.getFields(new String(bytes, StandardCharsets.ISO_8859_1), "MSH-18")[0];
        Charset charset = charsetOf(msh18);
        String text = new String(bytes, charset);
        // ER7 segments end in \r; files written by hand may use \n.
        text = text.replace("\r\n", "\r").replace('\n', '\r');
        return parser.parse(text);
    }

    /** Java charset of an MSH-18 value (HL7 table 0211; HAPI's own table is package-private). */
    static Charset charsetOf(String msh18) {
        if (msh18 == null || msh18.isBlank()) return StandardCharsets.UTF_8;
        return switch (msh18.trim()) {
            case "ASCII", "ISO IR6" -> StandardCharsets.US_ASCII;
            case "8859/1", "ISO IR100" -> StandardCharsets.ISO_8859_1;
            case "8859/15" -> Charset.forName("ISO-8859-15");
            case "UNICODE UTF-8", "UNICODE" -> StandardCharsets.UTF_8;
            default -> throw new IllegalArgumentException("MSH-18 " + msh18 + " is not a character set this peer reads");
        };
    }

    static void send(String host, int port, List<String> files, int timeoutSeconds) throws Exception {
        HapiContext ctx = context(false);  // send what the file says; the receiver judges it
        PipeParser parser = ctx.getPipeParser();
        Initiator init = null;
        String connectError = null;
        try {
            init = connect(ctx, host, port, timeoutSeconds);
        } catch (HL7Exception e) {
            connectError = "cannot connect: " + (e.getCause() == null ? e.getMessage() : e.getCause().toString());
        }
        int failed = 0;
        for (String file : files) {
            Map<String, Object> rec = new LinkedHashMap<>();
            rec.put("file", file);
            if (init == null) {
                failed++;
                rec.put("ack", null);
                rec.put("error", connectError);
                System.out.println(Json.of(rec));
                continue;
            }
            try {
                Message ack = init.sendAndReceive(read(parser, file));
                Terser t = new Terser(ack);
                rec.put("ack", t.get("/MSA-1"));
                rec.put("controlId", t.get("/MSA-2"));
                rec.put("text", t.get("/MSA-3"));
                String err = null;
                try {
                    Segment errSeg = (Segment) ack.get("ERR");
                    err = errSeg.isEmpty() ? null : errSeg.encode();
                } catch (HL7Exception noErr) {
                    // the ACK structure of this version has no ERR: nothing to report
                }
                rec.put("error", err);
            } catch (HL7Exception | IOException | ca.uhn.hl7v2.llp.LLPException e) {
                failed++;
                rec.put("ack", null);
                rec.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            System.out.println(Json.of(rec));
            System.out.flush();
        }
        ctx.close();
        System.exit(failed == 0 ? 0 : 1);
    }

    static void sendMany(String host, int port, int count, List<String> files) throws Exception {
        if (files.size() != 1) usage();
        HapiContext ctx = context(false);
        PipeParser parser = ctx.getPipeParser();
        Message msg = read(parser, files.get(0));
        Terser t = new Terser(msg);
        String base = t.get("/MSH-10");
        // Each message is a new order: accession (OBR-18, IPC-1) made distinct along with MSH-10.
        List<Segment> segments = new ArrayList<>();
        collect(msg, segments);
        Segment obr = first(segments, "OBR");
        Segment ipc = first(segments, "IPC");
        String accession = obr == null ? "ACC" : Terser.get(obr, 18, 0, 1, 1);
        Initiator init = connect(ctx, host, port, 30);
        Map<String, Integer> codes = new LinkedHashMap<>();
        // One message first (connection setup, class loading), not timed.
        setIds(t, obr, ipc, base + "-W", accession + "-W");
        init.sendAndReceive(msg);
        long start = System.nanoTime();
        for (int i = 0; i < count; i++) {
            setIds(t, obr, ipc, base + "-" + i, accession + "-" + i);
            Message ack = init.sendAndReceive(msg);
            codes.merge(new Terser(ack).get("/MSA-1"), 1, Integer::sum);
        }
        double seconds = (System.nanoTime() - start) / 1e9;
        Map<String, Object> rec = new LinkedHashMap<>();
        rec.put("count", count);
        rec.put("seconds", seconds);
        rec.put("msgsPerSecond", count / seconds);
        rec.put("acks", codes);
        System.out.println(Json.of(rec));
        ctx.close();
        System.exit(0);
    }

    static void setIds(Terser t, Segment obr, Segment ipc, String controlId, String accession) throws HL7Exception {
        t.set("/MSH-10", controlId);
        if (obr != null) Terser.set(obr, 18, 0, 1, 1, accession);
        if (ipc != null) Terser.set(ipc, 1, 0, 1, 1, accession);
    }

    // ---------------------------------------------------------------------------------------------- JSON

    /** The few JSON shapes this program prints (no JSON library on the classpath: HAPI needs none). */
    static final class Json {
        static String of(Object v) {
            StringBuilder b = new StringBuilder();
            write(b, v);
            return b.toString();
        }

        @SuppressWarnings("unchecked")
        static void write(StringBuilder b, Object v) {
            if (v == null) {
                b.append("null");
            } else if (v instanceof Number || v instanceof Boolean) {
                b.append(v);
            } else if (v instanceof Map<?, ?> m) {
                b.append('{');
                boolean firstItem = true;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (!firstItem) b.append(',');
                    firstItem = false;
                    write(b, String.valueOf(e.getKey()));
                    b.append(':');
                    write(b, e.getValue());
                }
                b.append('}');
            } else if (v instanceof List<?> l) {
                b.append('[');
                for (int i = 0; i < l.size(); i++) {
                    if (i > 0) b.append(',');
                    write(b, l.get(i));
                }
                b.append(']');
            } else {
                String s = v.toString();
                b.append('"');
                for (int i = 0; i < s.length(); i++) {
                    char c = s.charAt(i);
                    switch (c) {
                        case '"' -> b.append("\\\"");
                        case '\\' -> b.append("\\\\");
                        case '\n' -> b.append("\\n");
                        case '\r' -> b.append("\\r");
                        case '\t' -> b.append("\\t");
                        default -> {
                            if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                            else b.append(c);
                        }
                    }
                }
                b.append('"');
            }
        }
    }
}
