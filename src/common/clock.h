// Monotonic and wall clocks in the units pgshift uses.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace pgshift {

using SteadyClock = std::chrono::steady_clock;

inline int64_t MonotonicMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             SteadyClock::now().time_since_epoch())
      .count();
}
inline int64_t MonotonicMillis() { return MonotonicMicros() / 1000; }
int64_t UnixMillis();
// RFC 3339 in UTC with milliseconds, e.g. 2026-11-21T22:37:49.123Z.
std::string FormatUtc(int64_t unix_millis);
std::string NowUtc();
void SleepMillis(int64_t ms);

}  // namespace pgshift
