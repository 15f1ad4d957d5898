// Where pgshift's own tools live: the checkout, its cache of server builds and client tools.
#pragma once

#include <string>

#include "common/status.h"

namespace pgshift::lab {

struct Paths {
  std::string root;   // the checkout (holds scripts/setup.sh)
  std::string cache;  // $PGSHIFT_CACHE or <root>/.cache

  // $PGSHIFT_HOME, else the folder above the running binary's build folder.
  static Paths Discover();

  // bin folder of the PostgreSQL server build of `major`, fetching it on demand.
  Result<std::string> ServerBin(int major) const;
  std::string ServerLib(int major) const;
  // The folder of the client tools (pg_dump, pg_dumpall, psql, pgbench): $PGSHIFT_PG_BIN,
  // else the newest major's tools scripts/setup.sh fetched (<cache>/pgclient/bin), else ""
  // (PATH).
  std::string ClientBinDir() const;
};

// The unprivileged OS user servers run as when pgshift runs as root ($PGSHIFT_OS_USER).
std::string ServerOsUser();

// Majors pgshift lab can run (those pinned in scripts/postgres-versions.txt).
inline constexpr int kMinMajor = 12;
inline constexpr int kMaxMajor = 18;

}  // namespace pgshift::lab
