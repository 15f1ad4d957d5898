#include "common/fault.h"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "common/clock.h"
#include "common/files.h"
#include "common/strings.h"

namespace pgshift {

namespace {

bool Is(const char* env, const std::string& point) {
  const char* v = std::getenv(env);
  return v != nullptr && point == v;
}

}  // namespace

void FaultPointForTest(const std::string& point) {
  if (Is("PGSHIFT_FAULT_KILL_AT", point)) {
    fprintf(stderr, "pgshift: fault injection: killed at %s\n", point.c_str());
    fflush(stderr);
    ::raise(SIGKILL);
  }
  const char* file = std::getenv("PGSHIFT_FAULT_HOLD_FILE");
  // Held once per process: a recovery that passes the same point again goes on.
  static std::atomic<bool> held{false};
  if (Is("PGSHIFT_FAULT_HOLD_AT", point) && file != nullptr && !held.exchange(true)) {
    fprintf(stderr, "pgshift: fault injection: held at %s\n", point.c_str());
    fflush(stderr);
    if (!WriteFileAtomic(file, point + "\n", 0644).ok()) return;
    const int64_t until = MonotonicMillis() + 120000;
    while (PathExists(file) && MonotonicMillis() < until) SleepMillis(10);
  }
}

Status FailPointForTest(const std::string& point) {
  const char* v = std::getenv("PGSHIFT_FAULT_FAIL_AT");
  if (v == nullptr) return Status::Ok();
  std::string spec = v;
  long long times = 1;
  if (auto star = spec.find('*'); star != std::string::npos) {
    if (!ParseInt64(spec.substr(star + 1), &times)) times = 1;
    spec = spec.substr(0, star);
  }
  if (spec != point) return Status::Ok();
  static std::mutex mu;
  static std::map<std::string, long long> seen;
  std::lock_guard<std::mutex> lock(mu);
  if (seen[point]++ >= times) return Status::Ok();
  fprintf(stderr, "pgshift: fault injection: %s fails\n", point.c_str());
  fflush(stderr);
  return Status::Unavailable("injected failure at " + point + " (test)");
}

}  // namespace pgshift
