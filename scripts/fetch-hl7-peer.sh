#!/usr/bin/env bash
# Fetches the independent HL7 v2 peer's jars (HAPI HL7v2 2.6.0 + SLF4J) from Maven Central into the cache,
# outside the repo: ${PACSFLOW_CACHE:-~/.cache/pacsflow}/hapi/lib. Each jar is checked against the .sha1 that
# Maven Central publishes next to it. Idempotent: jars already there with the right sha1 are kept.
# tests/peers/hapi/Peer.java runs on them with `java -cp "$LIB/*" Peer.java` (Java 17, JDK for the source launcher).
#
#   scripts/fetch-hl7-peer.sh        fetch what is missing
#   scripts/fetch-hl7-peer.sh path   print the lib directory
set -euo pipefail

CACHE=${PACSFLOW_CACHE:-$HOME/.cache/pacsflow}
LIB=$CACHE/hapi/lib
REPO_URL=${MAVEN_CENTRAL:-https://repo1.maven.org/maven2}

# group:artifact:version. hapi-base's POM needs slf4j-api, commons-lang3 3.12.0 and joda-time 2.1 at run time
# (the rest of its dependencies are optional). SLF4J 2 reads HAPI's 1.7-era calls unchanged.
ARTIFACTS=(
  ca.uhn.hapi:hapi-base:2.6.0
  ca.uhn.hapi:hapi-structures-v23:2.6.0
  ca.uhn.hapi:hapi-structures-v231:2.6.0
  ca.uhn.hapi:hapi-structures-v251:2.6.0
  org.apache.commons:commons-lang3:3.12.0
  joda-time:joda-time:2.1
  org.slf4j:slf4j-api:2.0.17
  org.slf4j:slf4j-simple:2.0.17
)

if [ "${1:-}" = path ]; then echo "$LIB"; exit 0; fi

mkdir -p "$LIB"
exec 9>"$LIB/.fetch.lock"
flock 9

sha1_of() { sha1sum "$1" | cut -d' ' -f1; }

for coord in "${ARTIFACTS[@]}"; do
  IFS=: read -r group artifact version <<<"$coord"
  jar="$artifact-$version.jar"
  url="$REPO_URL/${group//.//}/$artifact/$version/$jar"
  # The published .sha1 is sometimes "<hash>  <file name>": keep the first word.
  want_file="$LIB/$jar.sha1"
  if [ ! -s "$want_file" ]; then
    curl -fsSL --retry 3 -o "$want_file.tmp" "$url.sha1"
    mv "$want_file.tmp" "$want_file"
  fi
  want=$(cut -d' ' -f1 <"$want_file" | tr -d '[:space:]')
  if [ -f "$LIB/$jar" ] && [ "$(sha1_of "$LIB/$jar")" = "$want" ]; then continue; fi
  curl -fsSL --retry 3 -o "$LIB/$jar.tmp" "$url"
  got=$(sha1_of "$LIB/$jar.tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$LIB/$jar.tmp"
    echo "sha1 mismatch for $jar: Maven Central says $want, downloaded $got" >&2
    exit 1
  fi
  mv "$LIB/$jar.tmp" "$LIB/$jar"
  echo "fetched $jar"
done

command -v java >/dev/null || {
  echo "java not found: the HL7 peer needs a JDK 17 (apt-get install openjdk-17-jdk-headless)" >&2
  exit 1
}
