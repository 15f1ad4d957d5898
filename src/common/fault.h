// Test hooks for fault-injection tests, driven by the environment (never set in production):
//   PGSHIFT_FAULT_KILL_AT=<point>   the process kills itself with SIGKILL at <point>, as kill -9
//                                   would, right after the state was saved;
//   PGSHIFT_FAULT_HOLD_AT=<point>   at <point> it writes $PGSHIFT_FAULT_HOLD_FILE and waits
//                                   (at most 120 s) until the test removes it: the test acts on
//                                   the world meanwhile (stops a server, kills the router); once
//                                   per process;
//   PGSHIFT_FAULT_FAIL_AT=<point>[*N]  FailPointForTest(<point>) returns an error the first N
//                                   times (default 1) in this process.
// Points are names such as "CuttingOver" (a phase just entered), "forward:before-fence" (a
// cutover step, cutover_executor.h) or "pgbouncer-reload".
#pragma once

#include <string>

#include "common/status.h"

namespace pgshift {

void FaultPointForTest(const std::string& point);
Status FailPointForTest(const std::string& point);

}  // namespace pgshift
