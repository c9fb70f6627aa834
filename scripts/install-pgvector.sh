#!/usr/bin/env bash
# Installs the pgvector extension into the local PostgreSQL server (Debian), as root.
# Knowledge assistants on PostgreSQL need it. Uses Debian's binary package where the release has one
# for this PostgreSQL; otherwise builds Debian's pgvector source package against the server's headers.
set -euo pipefail
available() {
  psql -h 127.0.0.1 -U postgres -d "${PGDATABASE:-test}" -tAc \
    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'" 2>/dev/null | grep -q 1
}
if available; then exit 0; fi
version="$(ls /etc/postgresql | sort -V | tail -1)"
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y --no-install-recommends "postgresql-${version}-pgvector" >/dev/null 2>&1 && available; then
  exit 0
fi
echo ">> building pgvector for PostgreSQL ${version} from Debian's source package"
sources=/etc/apt/sources.list.d/opensupervisor-pgvector-src.sources
if ! apt-cache showsrc pgvector 2>/dev/null | grep -q '^Package: pgvector'; then
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$sources"
  apt-get update -qq
fi
apt-get install -y --no-install-recommends "postgresql-server-dev-${version}" make gcc >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only pgvector >/dev/null 2>&1
tar xzf pgvector_*.orig.tar.gz
cd pgvector-*/
make -s PG_CONFIG="/usr/lib/postgresql/${version}/bin/pg_config" >/dev/null
make -s install PG_CONFIG="/usr/lib/postgresql/${version}/bin/pg_config" >/dev/null
available
