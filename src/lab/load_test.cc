#include "lab/load.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace pgshift::lab {
namespace {

std::string WriteTemp(const std::string& content) {
  char path[] = "/tmp/pgshift-ledger-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  std::ofstream(path) << content;
  return path;
}

TEST(Ledger, ReplaysToTheLastAcknowledgedStatePerKey) {
  std::string p = WriteTemp(
      "# pgshift-load v1 run=1\n"
      "I 10 1\nU 10 2\nU 10 3\n"
      "I 11 1\nD 11\n"
      "I 12 1\n? 12 1 2\n"
      "? 13 0 1\n");
  auto l = ReadLedger(p);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->acknowledged, 6);
  ASSERT_EQ(l->keys.size(), 4u);
  EXPECT_TRUE(l->keys[10].present);
  EXPECT_EQ(l->keys[10].version, 3);
  EXPECT_FALSE(l->keys[11].present);
  EXPECT_FALSE(l->keys[11].uncertain);
  EXPECT_TRUE(l->keys[12].uncertain);
  EXPECT_EQ(l->keys[12].allowed, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(l->keys[13].allowed, (std::vector<int64_t>{0, 1}));
  std::remove(p.c_str());
}

TEST(Ledger, ToleratesOnlyATornLastLine) {
  std::string torn = WriteTemp("I 1 1\nI");
  auto ok = ReadLedger(torn);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->acknowledged, 1);
  std::string bad = WriteTemp("I 1 1\nX 2 3\nI 4 1\n");
  EXPECT_FALSE(ReadLedger(bad).ok());
  std::remove(torn.c_str());
  std::remove(bad.c_str());
}

TEST(LoadPayload, DependsOnKeyAndVersion) {
  EXPECT_EQ(LoadPayload(1, 1), LoadPayload(1, 1));
  EXPECT_NE(LoadPayload(1, 1), LoadPayload(1, 2));
  EXPECT_NE(LoadPayload(1, 1), LoadPayload(2, 1));
}

TEST(LoadSummary, PrintsTheContractedLine) {
  LoadSummary s;
  s.acknowledged = 5;
  s.errors = 1;
  s.max_latency_ms = 12.34;
  EXPECT_EQ(s.SummaryLine().rfind("acknowledged=5 errors=1 max_latency_ms=12.3 p50_ms=", 0), 0u);
}

}  // namespace
}  // namespace pgshift::lab
