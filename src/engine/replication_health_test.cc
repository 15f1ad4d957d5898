#include "engine/replication_health.h"

#include <gtest/gtest.h>

namespace pgshift::engine {
namespace {

// A PostgreSQL 18 log (log_line_prefix '%m [%p] %u@%d '), as seen while two tables of
// subscription "sub" failed their copy; another subscription's worker fails in between.
const char kLog[] =
    "2026-12-01 06:31:03.195 UTC [6518] @ LOG:  logical replication table synchronization "
    "worker for subscription \"sub\", table \"c\" has started\n"
    "2026-12-01 06:31:03.201 UTC [6519] @ LOG:  logical replication table synchronization "
    "worker for subscription \"sub\", table \"p\" has started\n"
    "2026-12-01 06:31:03.300 UTC [7000] @ LOG:  logical replication table synchronization "
    "worker for subscription \"other\", table \"c\" has started\n"
    "2026-12-01 06:31:03.350 UTC [7000] @ ERROR:  could not connect to the publisher\n"
    "2026-12-01 06:31:03.351 UTC [4596] @ LOG:  background worker \"logical replication "
    "tablesync worker\" (PID 7000) exited with exit code 1\n"
    "2026-12-01 06:31:03.406 UTC [6518] @ ERROR:  value for domain public.posint violates check "
    "constraint \"posint_check\"\n"
    "2026-12-01 06:31:03.406 UTC [6518] @ CONTEXT:  COPY c, line 1, column d: \"-3\"\n"
    "2026-12-01 06:31:03.410 UTC [4596] @ LOG:  background worker \"logical replication "
    "tablesync worker\" (PID 6518) exited with exit code 1\n"
    "2026-12-01 06:31:03.428 UTC [6519] @ ERROR:  new row for relation \"p\" violates check "
    "constraint \"p_v_pos\"\n"
    "2026-12-01 06:31:03.428 UTC [6519] @ DETAIL:  Failing row contains (1, -5).\n"
    "2026-12-01 06:31:03.428 UTC [6519] @ CONTEXT:  COPY p, line 1: \"1\t-5\"\n"
    "2026-12-01 06:31:03.430 UTC [4596] @ LOG:  background worker \"logical replication "
    "tablesync worker\" (PID 6519) exited with exit code 1\n";

TEST(FindWorkerErrors, PairsEachFailedWorkerWithItsTableAndError) {
  auto errors = FindWorkerErrors(kLog, "sub", {"c", "p"});
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].table, "c");
  EXPECT_EQ(errors[0].text,
            "ERROR:  value for domain public.posint violates check constraint \"posint_check\"\n"
            "CONTEXT:  COPY c, line 1, column d: \"-3\"");
  EXPECT_EQ(errors[1].table, "p");
  EXPECT_EQ(errors[1].text,
            "ERROR:  new row for relation \"p\" violates check constraint \"p_v_pos\"\n"
            "DETAIL:  Failing row contains (1, -5).\n"
            "CONTEXT:  COPY p, line 1: \"1\t-5\"");
  // The other subscription's failure is its own.
  auto other = FindWorkerErrors(kLog, "other", {"c"});
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].text, "ERROR:  could not connect to the publisher");
  EXPECT_TRUE(FindWorkerErrors(kLog, "nobody", {"c"}).empty());
}

TEST(FindWorkerErrors, KeepsTheLatestErrorPerWorkerAndFindsApplyErrors) {
  const std::string log = std::string(kLog) +
      "2026-12-01 06:31:08.446 UTC [6613] @ LOG:  logical replication table synchronization "
      "worker for subscription \"sub\", table \"c\" has started\n"
      "2026-12-01 06:31:08.683 UTC [6613] @ ERROR:  something else now\n"
      "2026-12-01 06:31:08.685 UTC [4596] @ LOG:  background worker \"logical replication "
      "tablesync worker\" (PID 6613) exited with exit code 1\n"
      "2026-12-01 06:31:09.000 UTC [6700] @ LOG:  logical replication apply worker for "
      "subscription \"sub\" has started\n"
      "2026-12-01 06:31:09.100 UTC [6700] @ ERROR:  duplicate key value violates unique "
      "constraint \"t_pkey\"\n"
      "2026-12-01 06:31:09.100 UTC [6700] @ CONTEXT:  processing remote data for replication "
      "origin \"pg_16462\" during message type \"INSERT\" for replication target relation "
      "\"public.t\" in transaction 800\n"
      "2026-12-01 06:31:09.101 UTC [4596] @ LOG:  background worker \"logical replication "
      "apply worker\" (PID 6700) exited with exit code 1\n";
  auto errors = FindWorkerErrors(log, "sub", {"c", "p"});
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_EQ(errors[0].table, "p");
  EXPECT_EQ(errors[1].table, "c");
  EXPECT_EQ(errors[1].text, "ERROR:  something else now");
  EXPECT_EQ(errors[2].table, "");  // the apply worker
  EXPECT_NE(errors[2].text.find("duplicate key"), std::string::npos);
  EXPECT_NE(errors[2].text.find("CONTEXT:  processing remote data"), std::string::npos);
}

TEST(FindWorkerErrors, WithoutPidsFallsBackToTheCopyContext) {
  // log_line_prefix = '%t ': no PID anywhere.
  const std::string log =
      "2026-12-01 06:31:03 UTC LOG:  logical replication table synchronization worker for "
      "subscription \"sub\", table \"p\" has started\n"
      "2026-12-01 06:31:03 UTC ERROR:  new row for relation \"p\" violates check constraint "
      "\"p_v_pos\"\n"
      "2026-12-01 06:31:03 UTC CONTEXT:  COPY p, line 1: \"1\t-5\"\n"
      "2026-12-01 06:31:03 UTC ERROR:  unrelated\n";
  auto errors = FindWorkerErrors(log, "sub", {"p", "q"});
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].table, "p");
  EXPECT_NE(errors[0].text.find("p_v_pos"), std::string::npos);
}

}  // namespace
}  // namespace pgshift::engine
