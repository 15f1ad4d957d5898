#include "common/process.h"

#include <gtest/gtest.h>
#include <signal.h>

namespace pgshift {
namespace {

// psql stopping at its first error leaves most of a large script unread: writing the rest
// must fail quietly (EPIPE), whatever SIGPIPE's disposition was, and the child's own result
// must come back.
TEST(RunProcess, ChildThatStopsReadingEarlyIsReportedNotFatal) {
  ::signal(SIGPIPE, SIG_DFL);  // as a fresh process has it
  ProcessOptions p;
  p.argv = {"/bin/sh", "-c", "head -c 10 >/dev/null; echo 'stopped at line 1' >&2; exit 3"};
  p.stdin_data = std::string(8 << 20, 'x');  // far more than a pipe holds
  p.timeout_ms = 30000;
  auto r = RunProcess(p);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->term_signal, 0);
  EXPECT_EQ(r->Describe(), "exit code 3: stopped at line 1");
}

TEST(RunProcess, ChildStartsWithTheDefaultSigpipe) {
  IgnoreSigpipe();
  ProcessOptions p;
  // SigIgn in /proc/self/status: bit 13 (SIGPIPE) must be clear in the child.
  p.argv = {"/bin/sh", "-c", "grep SigIgn /proc/self/status"};
  auto r = RunProcess(p);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->ok()) << r->Describe();
  std::string mask = r->out.substr(r->out.find(':') + 1);
  unsigned long long bits = std::stoull(mask, nullptr, 16);
  EXPECT_EQ(bits & (1ULL << (SIGPIPE - 1)), 0u) << r->out;
}

}  // namespace
}  // namespace pgshift
