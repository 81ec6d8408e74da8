#!/usr/bin/env bash
# Fetches the identity provider the single sign-on tests run against: Keycloak (org.keycloak:keycloak-quarkus-dist)
# from Maven Central into the cache, outside the repo: ${PACSFLOW_CACHE:-~/.cache/pacsflow}/keycloak/keycloak-<v>.
# The zip is checked against the .sha1 Maven Central publishes next to it, then unpacked once. Idempotent.
# tests/peers/keycloak.py runs `bin/kc.sh start-dev` from there with a Java 21+ (Keycloak 26 needs it).
#
#   scripts/fetch-identity-peer.sh        fetch and unpack what is missing
#   scripts/fetch-identity-peer.sh path   print the Keycloak home directory
set -euo pipefail

VERSION=${KEYCLOAK_VERSION:-26.5.6}
CACHE=${PACSFLOW_CACHE:-$HOME/.cache/pacsflow}
DIR=$CACHE/keycloak
HOME_DIR=$DIR/keycloak-$VERSION
REPO_URL=${MAVEN_CENTRAL:-https://repo1.maven.org/maven2}

if [ "${1:-}" = path ]; then echo "$HOME_DIR"; exit 0; fi

mkdir -p "$DIR"
exec 9>"$DIR/.fetch.lock"
flock 9

if [ ! -x "$HOME_DIR/bin/kc.sh" ]; then
  zip="keycloak-quarkus-dist-$VERSION.zip"
  url="$REPO_URL/org/keycloak/keycloak-quarkus-dist/$VERSION/$zip"
  if [ ! -s "$DIR/$zip.sha1" ]; then
    curl -fsSL --retry 3 -o "$DIR/$zip.sha1.tmp" "$url.sha1"
    mv "$DIR/$zip.sha1.tmp" "$DIR/$zip.sha1"
  fi
  want=$(cut -d' ' -f1 <"$DIR/$zip.sha1" | tr -d '[:space:]')
  if [ ! -f "$DIR/$zip" ] || [ "$(sha1sum "$DIR/$zip" | cut -d' ' -f1)" != "$want" ]; then
    curl -fsSL --retry 3 -o "$DIR/$zip.tmp" "$url"
    got=$(sha1sum "$DIR/$zip.tmp" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      rm -f "$DIR/$zip.tmp"
      echo "sha1 mismatch for $zip: Maven Central says $want, downloaded $got" >&2
      exit 1
    fi
    mv "$DIR/$zip.tmp" "$DIR/$zip"
  fi
  rm -rf "$DIR/unpack.tmp"
  mkdir "$DIR/unpack.tmp"
  python3 -m zipfile -e "$DIR/$zip" "$DIR/unpack.tmp"
  chmod +x "$DIR/unpack.tmp/keycloak-$VERSION/bin/"*.sh
  rm -rf "$HOME_DIR"
  mv "$DIR/unpack.tmp/keycloak-$VERSION" "$HOME_DIR"
  rmdir "$DIR/unpack.tmp"
  rm -f "$DIR/$zip"  # unpacked and checked: the zip is not needed any more
  echo "fetched Keycloak $VERSION into $HOME_DIR"
fi

java=""
for candidate in "${KEYCLOAK_JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
  if [ -n "$candidate" ] && [ -x "$candidate/bin/java" ]; then java=$candidate; break; fi
done
if [ -z "$java" ]; then
  echo "no Java 21+ found for Keycloak: install temurin-25-jdk or openjdk-21-jdk-headless" >&2
  exit 1
fi
