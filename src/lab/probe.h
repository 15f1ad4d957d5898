// pgshift load probe: tries a write every few milliseconds through each of several paths
// (a DSN and a way of asking for a writable transaction) and records every success with the
// server's clock and port. The cutover tests use it to show that at no instant both servers of
// a migration take a write: its successes on the two servers must never interleave in time.
//
// Writes go to pgshift_probe.writes (path text, at timestamptz), which the test makes before
// the migration, so that it is replicated and fenced like any application table.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::lab {

// How a probe asks for a writable transaction, each a way around the old advisory fence.
enum class ProbeMode {
  kPlain,        // INSERT
  kReadOnlyOff,  // SET default_transaction_read_only = off; INSERT
  kBeginRw,      // BEGIN READ WRITE; INSERT; COMMIT
  kSetTxRw,      // BEGIN; SET TRANSACTION READ WRITE; INSERT; COMMIT
};

struct ProbePath {
  std::string name;  // written into each row and the output: "direct-super-plain"
  std::string dsn;
  ProbeMode mode = ProbeMode::kPlain;
};

struct ProbeOptions {
  std::vector<ProbePath> paths;
  int interval_ms = 5;
  double duration_s = 60;
  // Each success appends "<server ms since epoch>,<server port>,<path name>" and is flushed at
  // once, so the file is whole whenever the probe is stopped (SIGTERM ends it).
  std::string out;
};

struct ProbeSummary {
  int64_t attempts = 0;
  int64_t successes = 0;
};

// "plain" | "readonly-off" | "begin-rw" | "set-tx-rw"
Result<ProbeMode> ParseProbeMode(const std::string& name);

Result<ProbeSummary> RunProbe(const ProbeOptions& options);

}  // namespace pgshift::lab
