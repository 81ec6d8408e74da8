// A modality's MPPS SCU on dcmjs-dimse (an independent DIMSE stack): N-CREATE / N-SET over one association.
//
// Reads a JSON spec on stdin:
//   {"host": "127.0.0.1", "port": 11112, "calling": "CT_ED_1", "called": "PACSFLOW",
//    "requests": [{"op": "create" | "set", "uid": "<MPPS SOP Instance UID>", "dataset": {<dcmjs naturalized>}}]}
// and writes one JSON object on stdout: {"responses": [{"op", "uid", "status", "errorComment", "errorId", "receivedAt"}]}, in
// request order, or {"error": "..."} with exit code 2 when the association failed.
// Run with NODE_PATH pointing at the cache's node_modules (scripts/install-node-peers.sh; tests/peers/modality.py).
'use strict';

const net = require('net');
const dcmjsDimse = require('dcmjs-dimse');

// TCP_NODELAY on the DICOM socket (STYLE.md): dcmjs-dimse leaves Nagle on, and it opens its socket via net.connect.
const connect = net.connect;
net.connect = (...args) => connect(...args).setNoDelay(true);

const { Client, Dataset } = dcmjsDimse;
// stdout carries only the JSON answer; warnings and errors still reach stderr.
dcmjsDimse.log.setLevel('warn');
const { NCreateRequest, NSetRequest } = dcmjsDimse.requests;
const { SopClass } = dcmjsDimse.constants;

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (c) => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function fail(message) {
  process.stdout.write(JSON.stringify({ error: message }) + '\n');
  process.exit(2);
}

async function main() {
  const spec = JSON.parse(await readStdin());
  const client = new Client();
  const responses = new Array(spec.requests.length).fill(null);
  spec.requests.forEach((r, index) => {
    const request = r.op === 'create'
      ? new NCreateRequest(SopClass.ModalityPerformedProcedureStep, r.uid)
      : new NSetRequest(SopClass.ModalityPerformedProcedureStep, r.uid);
    request.setDataset(new Dataset(r.dataset));
    request.on('response', (response) => {
      const status = response.getStatus();
      const command = response.getCommandDataset();
      // Error Comment / Error ID belong to failures only (PS3.7 C.4). dcmjs-dimse 0.3.3 keeps them across responses
      // of one association: a later response without them still reports the earlier values (the wire carries none:
      // checked with pynetdicom's SCU). So they are read for failures only, and an Error ID is trustworthy only on
      // the first failure that carries one.
      const failed = status !== 0;
      const errorId = failed && command ? command.getElement('ErrorID') : undefined;
      responses[index] = {
        op: r.op,
        uid: r.uid,
        status,
        errorComment: failed ? response.getErrorComment() || null : null,
        errorId: errorId === undefined ? null : errorId,
        // Wall clock (seconds) when the answer arrived, before the association is released (bench/worklist.py).
        receivedAt: (performance.timeOrigin + performance.now()) / 1000,
      };
    });
    client.addRequest(request);
  });
  let failure = null;
  client.on('associationRejected', (result) => { failure = `association rejected: ${JSON.stringify(result)}`; });
  client.on('networkError', (e) => { failure = `network error: ${e.message || e}`; });
  client.on('closed', () => {
    if (failure !== null) fail(failure);
    process.stdout.write(JSON.stringify({ responses }) + '\n');
    process.exit(0);
  });
  client.send(spec.host, spec.port, spec.calling, spec.called, { connectTimeout: 10000, associationTimeout: 10000,
    pduTimeout: 10000 });
}

main().catch((e) => fail(String(e && e.stack ? e.stack : e)));
