#include "common/process.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <map>

#include "common/clock.h"
#include "common/strings.h"

extern char** environ;

namespace pgshift {
namespace {

// An fd that closes itself.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Close(); }
  int get() const { return fd_; }
  void Reset(int fd) {
    Close();
    fd_ = fd;
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void Release() { fd_ = -1; }

 private:
  int fd_ = -1;
};

bool MakePipe(Fd* r, Fd* w) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return false;
  r->Reset(p[0]);
  w->Reset(p[1]);
  return true;
}

// Our environment with `env` added (replacing variables of the same name), as KEY=VALUE.
std::vector<std::string> EnvironmentWith(const std::map<std::string, std::string>& env) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    if (env.count(std::string(kv.substr(0, kv.find('='))))) continue;
    out.emplace_back(kv);
  }
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

// A NULL-terminated array of pointers into `strings`, which must outlive it.
std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

void IgnoreSigpipe() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGPIPE, &sa, nullptr);
  });
}

std::string ProcessResult::Describe() const {
  std::string what = term_signal ? "killed by signal " + std::to_string(term_signal)
                                 : "exit code " + std::to_string(exit_code);
  std::string tail(Trim(err.empty() ? out : err));
  if (tail.size() > 2000) tail = "..." + tail.substr(tail.size() - 2000);
  return tail.empty() ? what : what + ": " + tail;
}

Result<ProcessResult> RunProcess(const ProcessOptions& options) {
  if (options.argv.empty()) return Status::InvalidArgument("no program to run");
  // A child that exits before reading all of its input (psql stopping at the first error)
  // must cost us an EPIPE on the write, not our life.
  IgnoreSigpipe();
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
  bool switch_user = !options.run_as.empty() && ::geteuid() == 0;
  if (switch_user) {
    struct passwd* pw = ::getpwnam(options.run_as.c_str());
    if (pw == nullptr) {
      return Status::FailedPrecondition("OS user '" + options.run_as +
                                        "' does not exist; run scripts/setup.sh to create it");
    }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    home = pw->pw_dir;
  }

  // Build argv and envp before fork: only async-signal-safe calls are allowed after it.
  std::map<std::string, std::string> env = options.env;
  if (switch_user) {
    env["HOME"] = home;
    env["USER"] = options.run_as;
    env["LOGNAME"] = options.run_as;
  }
  std::vector<std::string> env_strings = EnvironmentWith(env);
  std::vector<char*> envp = CStrings(env_strings);
  std::vector<std::string> argv_copy = options.argv;
  std::vector<char*> argv = CStrings(argv_copy);
  std::string program = options.argv[0];
  if (program.find('/') == std::string::npos) {
    std::string found = FindOnPath(program);
    if (found.empty()) return Status::NotFound("program not found on PATH: " + program);
    program = found;
  }

  Fd in_r, in_w, out_r, out_w, err_r, err_w, devnull;
  if (!MakePipe(&in_r, &in_w) || !MakePipe(&out_r, &out_w) || !MakePipe(&err_r, &err_w)) {
    return Status::Internal(std::string("pipe: ") + strerror(errno));
  }
  devnull.Reset(::open("/dev/null", O_RDWR | O_CLOEXEC));

  pid_t pid = ::fork();
  if (pid < 0) return Status::Unavailable(std::string("fork: ") + strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    // Signals the parent blocks to take them as stop requests (StopSignals) are the child's own.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Ignored signals stay ignored across exec: give the child the default SIGPIPE back.
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(options.stdin_data ? in_r.get() : devnull.get(), 0);
    ::dup2(options.capture_stdout ? out_w.get() : devnull.get(), 1);
    ::dup2(options.capture_stderr ? err_w.get() : devnull.get(), 2);
    if (switch_user) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) _exit(126);
    }
    if (!options.cwd.empty() && ::chdir(options.cwd.c_str()) != 0) _exit(126);
    ::execve(program.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  in_r.Close();
  out_w.Close();
  err_w.Close();
  if (!options.stdin_data) in_w.Close();
  // Never block on the child's input while it blocks on a full output pipe we should drain.
  if (in_w.get() >= 0) ::fcntl(in_w.get(), F_SETFL, O_NONBLOCK);

  ProcessResult result;
  size_t in_off = 0;
  int64_t deadline = options.timeout_ms >= 0 ? MonotonicMillis() + options.timeout_ms : -1;
  bool timed_out = false;
  while (out_r.get() >= 0 || err_r.get() >= 0) {
    std::vector<pollfd> fds;
    if (out_r.get() >= 0) fds.push_back({out_r.get(), POLLIN, 0});
    if (err_r.get() >= 0) fds.push_back({err_r.get(), POLLIN, 0});
    if (in_w.get() >= 0) fds.push_back({in_w.get(), POLLOUT, 0});
    int wait_ms = -1;
    if (deadline >= 0) {
      wait_ms = static_cast<int>(deadline - MonotonicMillis());
      if (wait_ms <= 0) {
        timed_out = true;
        break;
      }
    }
    int n = ::poll(fds.data(), fds.size(), wait_ms);
    if (n < 0 && errno != EINTR) break;
    for (const auto& p : fds) {
      if (p.revents == 0) continue;
      if (p.fd == in_w.get()) {
        const std::string& data = *options.stdin_data;
        if ((p.revents & (POLLERR | POLLHUP)) != 0) {
          in_w.Close();  // the child closed its input (or exited): the rest is not wanted
          continue;
        }
        ssize_t w = ::write(in_w.get(), data.data() + in_off, data.size() - in_off);
        if (w > 0) in_off += static_cast<size_t>(w);
        if ((w < 0 && errno != EINTR && errno != EAGAIN) || in_off >= data.size()) in_w.Close();
        continue;
      }
      char buf[65536];
      ssize_t r = ::read(p.fd, buf, sizeof buf);
      bool is_out = p.fd == out_r.get();
      if (r <= 0) {
        (is_out ? out_r : err_r).Close();
      } else {
        (is_out ? result.out : result.err).append(buf, static_cast<size_t>(r));
      }
    }
  }
  if (timed_out) ::kill(-pid, SIGKILL);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return Status::DeadlineExceeded(options.argv[0] + " did not finish within " +
                                    std::to_string(options.timeout_ms) + " ms");
  }
  if (WIFEXITED(wstatus)) {
    result.exit_code = WEXITSTATUS(wstatus);
    if (result.exit_code == 127) {
      return Status::NotFound("cannot execute " + program);
    }
  } else if (WIFSIGNALED(wstatus)) {
    result.term_signal = WTERMSIG(wstatus);
  }
  return result;
}

std::string FindOnPath(const std::string& name) {
  const char* path = ::getenv("PATH");
  std::string p = path ? path : "/usr/local/bin:/usr/bin:/bin";
  p += ":/usr/sbin:/sbin";
  for (const auto& dir : Split(p, ':', true)) {
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

Result<int> StartDaemon(const std::string& program, const std::vector<std::string>& argv,
                        const std::map<std::string, std::string>& env,
                        const std::string& log_file) {
  if (argv.empty()) return Status::InvalidArgument("no program to run");
  std::vector<std::string> env_strings = EnvironmentWith(env);
  std::vector<char*> envp = CStrings(env_strings);
  std::vector<std::string> argv_copy = argv;
  std::vector<char*> args = CStrings(argv_copy);
  Fd out_r, out_w, devnull, log;
  if (!MakePipe(&out_r, &out_w)) return Status::Internal(std::string("pipe: ") + strerror(errno));
  devnull.Reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!log_file.empty()) {
    log.Reset(::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  }
  int err_fd = log.get() >= 0 ? log.get() : devnull.get();
  pid_t pid = ::fork();
  if (pid < 0) return Status::Unavailable(std::string("fork: ") + strerror(errno));
  if (pid == 0) {
    // A session of its own: no signal sent to pgshift's process group or terminal reaches it.
    ::setsid();
    pid_t grandchild = ::fork();
    if (grandchild != 0) _exit(grandchild < 0 ? 1 : 0);
    ::dup2(devnull.get(), 0);
    ::dup2(out_w.get(), 1);
    ::dup2(err_fd, 2);
    ::execve(program.c_str(), args.data(), envp.data());
    _exit(127);
  }
  out_w.Close();
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return Status::Unavailable("could not start " + argv[0] + " (fork failed)");
  }
  int fd = out_r.get();
  out_r.Release();
  return fd;
}

bool ProcessAlive(int pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie still answers kill(0); read its state.
  std::string stat_path = "/proc/" + std::to_string(pid) + "/stat";
  FILE* f = fopen(stat_path.c_str(), "r");
  if (f == nullptr) return true;
  char buf[512] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  std::string_view s(buf, n);
  auto close = s.rfind(')');
  if (close != std::string_view::npos && close + 2 < s.size() && s[close + 2] == 'Z') return false;
  return true;
}

}  // namespace pgshift
