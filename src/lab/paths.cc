#include "lab/paths.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "common/files.h"
#include "common/process.h"

namespace pgshift::lab {

Paths Paths::Discover() {
  Paths p;
  if (const char* home = std::getenv("PGSHIFT_HOME"); home && *home) {
    p.root = AbsolutePath(home);
  } else {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    std::string dir = n > 0 ? DirName(std::string(buf, static_cast<size_t>(n))) : ".";
    // build/pgshift, build-asan/pgshift, build/test/...: walk up to the checkout.
    for (int i = 0; i < 4 && dir != "/"; ++i) {
      if (PathExists(dir + "/scripts/setup.sh")) break;
      dir = DirName(dir);
    }
    p.root = PathExists(dir + "/scripts/setup.sh") ? dir : AbsolutePath(".");
  }
  const char* cache = std::getenv("PGSHIFT_CACHE");
  p.cache = cache && *cache ? AbsolutePath(cache) : p.root + "/.cache";
  return p;
}

Result<std::string> Paths::ServerBin(int major) const {
  if (major < kMinMajor || major > kMaxMajor) {
    return Status::InvalidArgument("unknown PostgreSQL major version " + std::to_string(major) +
                                   ": pgshift lab runs majors " + std::to_string(kMinMajor) +
                                   " to " + std::to_string(kMaxMajor));
  }
  std::string bin = cache + "/postgres/" + std::to_string(major) + "/native/bin";
  if (PathExists(bin + "/postgres")) return bin;
  ProcessOptions fetch;
  fetch.argv = {root + "/scripts/setup.sh", "--pg-only", std::to_string(major)};
  fetch.env["PGSHIFT_CACHE"] = cache;
  fetch.timeout_ms = 10 * 60 * 1000;
  auto r = RunProcess(fetch);
  if (!r.ok() || !r->ok() || !PathExists(bin + "/postgres")) {
    return Status::FailedPrecondition(
        "PostgreSQL " + std::to_string(major) + " server binaries are missing from " + bin +
        " and fetching them failed" + (r.ok() ? ": " + r->Describe() : ": " + r.status().message()) +
        "; run scripts/setup.sh --pg " + std::to_string(major));
  }
  return bin;
}

std::string Paths::ServerLib(int major) const {
  return cache + "/postgres/" + std::to_string(major) + "/native/lib";
}

std::string Paths::ClientBinDir() const {
  const char* env = std::getenv("PGSHIFT_PG_BIN");
  if (env && *env) return AbsolutePath(env);
  std::string ours = cache + "/pgclient/bin";
  if (::access((ours + "/pg_dump").c_str(), X_OK) == 0) return ours;
  return "";
}

std::string ServerOsUser() {
  const char* u = std::getenv("PGSHIFT_OS_USER");
  return u && *u ? u : "pgshift";
}

}  // namespace pgshift::lab
