// Child processes: run to completion with captured output, or start detached daemons.
// Secrets travel through `env`, never through argv (argv is visible to every local user).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift {

struct ProcessOptions {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // added to (or replacing in) the current environment
  std::string cwd;
  std::optional<std::string> stdin_data;
  // Run as this OS user (via setuid after fork) when pgshift runs as root; empty: as ourselves.
  std::string run_as;
  int timeout_ms = -1;  // kill the child and fail with kDeadlineExceeded after this long
  bool capture_stdout = true;
  bool capture_stderr = true;
};

struct ProcessResult {
  int exit_code = -1;    // when the child exited
  int term_signal = 0;   // when it was killed by a signal
  std::string out;
  std::string err;
  bool ok() const { return term_signal == 0 && exit_code == 0; }
  // "exit code 3: <last lines of stderr>"
  std::string Describe() const;
};

// Runs the process to completion. Fails only when it could not be started or timed out; a
// non-zero exit is reported in the result.
Result<ProcessResult> RunProcess(const ProcessOptions& options);

// Finds `name` on PATH; empty when absent.
std::string FindOnPath(const std::string& name);
bool ProcessAlive(int pid);

}  // namespace pgshift
