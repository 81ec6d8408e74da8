#!/usr/bin/env bash
# Installs the Debian packages pacsflow's tests and demo run as real peers, when they are missing.
set -euo pipefail
need=()
command -v Orthanc >/dev/null || need+=(orthanc orthanc-dicomweb)
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v promtool >/dev/null || need+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # the results store on PostgreSQL
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)  # the reviewer page in a real browser
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog rsyslog-gnutls)  # the audit syslog collector (TLS)
command -v npm >/dev/null || need+=(nodejs npm)  # dcmjs-dimse, the MPPS modality peer (make node-peers)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless curl)  # HAPI HL7v2, the HL7 peer (make hl7-peer)
command -v openssl >/dev/null || need+=(openssl)  # openssl s_client: what the TLS edges refuse
command -v curl >/dev/null || need+=(curl)  # curl --cacert/--cert: the HTTPS edges (HL7, metrics)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
