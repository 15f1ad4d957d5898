#include "engine/wal_retention.h"

#include <gtest/gtest.h>

namespace pgshift::engine {
namespace {

constexpr int64_t kMB = 1024 * 1024;

TEST(WalRetention, NothingLimitingTheWalKeptIsAWarningWithBothWaysOut) {
  WalRetentionFacts f;
  f.major = 16;
  f.wal_dir_bytes = 48 * kMB;
  f.free_bytes = 10240 * kMB;
  auto r = CheckWalRetention(f, 0);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].severity, Severity::kWarning);
  EXPECT_NE(r[0].message.find("max_slot_wal_keep_size = -1 (unlimited)"), std::string::npos);
  EXPECT_NE(r[0].message.find("pg_wal holds 48.0 MB"), std::string::npos);
  EXPECT_NE(r[0].message.find("file system: 10.0 GB"), std::string::npos);
  EXPECT_NE(r[0].remedy.find("--max-retained-wal SIZE"), std::string::npos);
  EXPECT_NE(r[0].remedy.find("max_slot_wal_keep_size"), std::string::npos);

  // Either limit is enough; one above the free space is a warning again.
  EXPECT_EQ(CheckWalRetention(f, 2048 * kMB)[0].severity, Severity::kOk);
  EXPECT_EQ(CheckWalRetention(f, 20480 * kMB)[0].severity, Severity::kWarning);
  f.max_slot_wal_keep_bytes = 4096 * kMB;
  EXPECT_EQ(CheckWalRetention(f, 0)[0].severity, Severity::kOk);
  EXPECT_NE(CheckWalRetention(f, 0)[0].message.find("max_slot_wal_keep_size = 4.0 GB"),
            std::string::npos);
}

TEST(WalRetention, UnknownFiguresSayWhyAndOldMajorsHaveNoServerLimit) {
  WalRetentionFacts f;
  f.major = 12;
  f.free_note = "the source's data directory is not on this host";
  auto r = CheckWalRetention(f, 0);
  EXPECT_NE(r[0].message.find("no max_slot_wal_keep_size before PostgreSQL 13"), std::string::npos);
  EXPECT_NE(r[0].message.find("pg_wal holds ? (pg_ls_waldir needs pg_monitor)"), std::string::npos);
  EXPECT_NE(r[0].message.find("unknown (the source's data directory is not on this host)"),
            std::string::npos);
}

TEST(WalRetention, IdleSlotTimeoutAndStandbysAreNamed) {
  WalRetentionFacts f;
  f.major = 18;
  f.idle_slot_timeout_s = 3600;
  f.physical_standbys = 2;
  auto r = CheckWalRetention(f, 100 * kMB);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].severity, Severity::kWarning);
  EXPECT_NE(r[1].message.find("idle_replication_slot_timeout = 3600 s"), std::string::npos);
}

TEST(FailoverSlots, StandbysGetFailoverSlotsFrom17AndAWarningBefore) {
  WalRetentionFacts f;
  f.major = 18;
  EXPECT_TRUE(CheckFailoverSlots(f).empty());  // no standby: nothing to say
  f.physical_standbys = 2;
  auto r = CheckFailoverSlots(f);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].id, "failover-slots");
  EXPECT_EQ(r[0].severity, Severity::kWarning);  // the source does not wait for the standbys
  EXPECT_NE(r[0].remedy.find("synchronized_standby_slots"), std::string::npos);
  f.synchronized_standby_slots = "sb1, sb2";
  r = CheckFailoverSlots(f);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].severity, Severity::kInfo);
  EXPECT_NE(r[0].message.find("2 physical standby(s)"), std::string::npos);
  EXPECT_NE(r[0].message.find("waits for sb1, sb2"), std::string::npos);
  f.major = 16;
  r = CheckFailoverSlots(f);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].severity, Severity::kWarning);
  EXPECT_NE(r[0].message.find("start again"), std::string::npos);
  EXPECT_FALSE(FailoverSlots(16));
  EXPECT_TRUE(FailoverSlots(17));
}

TEST(WalRetention, GuardStopsPastTheLimitAndOnLostOrUnreservedWal) {
  SlotRetention s{"pgshift_ab_0", true, 40 * kMB, "reserved"};
  EXPECT_TRUE(GuardRetention(s, 0, "shop").ok());
  EXPECT_TRUE(GuardRetention(s, 48 * kMB, "shop").ok());
  s.retained_bytes = 64 * kMB;
  Status over = GuardRetention(s, 48 * kMB, "shop");
  EXPECT_EQ(over.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(over.message().find("keeps 64.0 MB of WAL for replication slot pgshift_ab_0 "
                                "(database shop), more than --max-retained-wal 48.0 MB"),
            std::string::npos);
  EXPECT_NE(over.message().find("`pgshift abort`"), std::string::npos);
  s.retained_bytes = 1;
  s.wal_status = "unreserved";
  EXPECT_NE(GuardRetention(s, 0, "shop").message().find("wal_status unreserved"), std::string::npos);
  s.wal_status = "lost";
  EXPECT_NE(GuardRetention(s, 0, "shop").message().find("start again"), std::string::npos);
  s.found = false;
  EXPECT_TRUE(GuardRetention(s, 1, "shop").ok());
}

}  // namespace
}  // namespace pgshift::engine
