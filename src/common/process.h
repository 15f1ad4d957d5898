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
// non-zero exit is reported in the result. A child that stops reading its input early (exits
// at its first error) leaves the rest unwritten: the write fails with EPIPE, never with
// SIGPIPE, because the first call ignores SIGPIPE for the whole process (IgnoreSigpipe); the
// child itself starts with the default SIGPIPE action.
Result<ProcessResult> RunProcess(const ProcessOptions& options);

// Sets SIGPIPE to ignored for this process, once (idempotent). pgshift writes to pipes and
// sockets whose reader may be gone; each such write must fail with EPIPE, never kill it.
void IgnoreSigpipe();

// Starts `program` as a daemon that outlives pgshift, kill -9 included: a session of its own
// (setsid) and a double fork, so it is init's child (never our zombie). argv[0] is the name it
// shows in ps; `env` is added to ours (secrets go there, never in argv). stdin is /dev/null,
// stderr is appended to `log_file` (/dev/null when empty), stdout is a pipe whose read end
// (O_CLOEXEC, the caller closes it) is returned, for a ready line.
Result<int> StartDaemon(const std::string& program, const std::vector<std::string>& argv,
                        const std::map<std::string, std::string>& env, const std::string& log_file);

// Finds `name` on PATH; empty when absent.
std::string FindOnPath(const std::string& name);
bool ProcessAlive(int pid);

}  // namespace pgshift
