// pgshift load: a client that writes and reads continuously and proves afterwards that no
// acknowledged write was lost.
//
// Writes go to pgshift_load.items (created on first use). Each client thread owns its keys;
// every acknowledged INSERT, UPDATE and DELETE is appended to the ledger, so the ledger knows the
// final state of every key. A write whose connection broke before the answer arrived has an
// unknown outcome: the ledger records both possible states and the key is never touched again.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::lab {

struct LoadOptions {
  std::string dsn;
  double rate = 100;        // operations per second, all clients together
  double duration_s = 10;
  std::string ledger;       // file; the series and summary go beside it
  int clients = 4;
  int read_percent = 20;    // share of operations that are reads
  bool progress = false;    // live one-line progress on stderr
  // > 0: every operation at least this slow (from its scheduled time) goes to FILE.slow.csv,
  // with wall-clock times, to line it up with other processes' logs.
  double slow_ms = 0;
};

struct LoadSummary {
  int64_t acknowledged = 0;  // writes the server confirmed
  int64_t reads = 0;
  int64_t errors = 0;        // failed operations, including failed reconnects
  int64_t uncertain = 0;     // writes whose outcome is unknown (connection broke)
  int64_t stale_reads = 0;   // reads that did not return the client's last acknowledged write
  int64_t reconnects = 0;
  double max_latency_ms = 0, p50_ms = 0, p99_ms = 0, p999_ms = 0;
  double achieved_rate = 0;  // operations completed per second
  double elapsed_s = 0;
  std::string SummaryLine() const;  // "acknowledged=N errors=E max_latency_ms=M p50_ms=..."
  std::string DetailLine() const;
};

Result<LoadSummary> RunLoad(const LoadOptions& options);

// The final state the ledger expects for one key.
struct KeyState {
  bool present = false;
  int64_t version = 0;
  bool uncertain = false;
  // For uncertain keys, each allowed state: version >= 1, or 0 for absent.
  std::vector<int64_t> allowed;
};

struct Ledger {
  int64_t acknowledged = 0;
  std::map<int64_t, KeyState> keys;
};
// Replays a ledger file into the final state per key.
Result<Ledger> ReadLedger(const std::string& path);

struct VerifyReport {
  int64_t acknowledged = 0;
  int64_t keys = 0;
  int64_t present = 0;
  int64_t deleted = 0;      // keys correctly absent
  int64_t uncertain = 0;    // keys with an unknown last write, found in an allowed state
  int64_t missing = 0;
  int64_t mismatched = 0;
  std::vector<std::string> problems;  // the first few, for people
  bool clean() const { return missing == 0 && mismatched == 0; }
  std::string SummaryLine() const;
};

Result<VerifyReport> VerifyLoad(const std::string& dsn, const std::string& ledger_path);

// The payload stored for (key, version); verify recomputes it to catch corrupted rows.
std::string LoadPayload(int64_t key, int64_t version);

}  // namespace pgshift::lab
