#include "engine/copy.h"

#include <gtest/gtest.h>

namespace pgshift::engine {
namespace {

constexpr int64_t kMiB = 1024 * 1024;

TEST(Copy, RangeSizeAimsAtEightPerJobWithinBounds) {
  EXPECT_EQ(RangeBytes(0, 2), 8 * kMiB);
  EXPECT_EQ(RangeBytes(1600 * kMiB, 2), 100 * kMiB);
  EXPECT_EQ(RangeBytes(int64_t{1} << 50, 4), 1024 * kMiB);
  EXPECT_EQ(RangeBytes(1600 * kMiB, 0), 200 * kMiB);  // no jobs counts as one
}

TEST(Copy, PagesCoverTheWholeTableWithOpenEnds) {
  auto r = SplitByPages("s", "t", 1000 * kMiB, 128000, 100 * kMiB);
  ASSERT_EQ(r.size(), 10u);
  EXPECT_FALSE(r.front().lo.has_value());
  EXPECT_FALSE(r.back().hi.has_value());
  for (size_t i = 0; i + 1 < r.size(); ++i) {
    EXPECT_EQ(r[i].kind, CopyRange::Kind::kPages);
    ASSERT_TRUE(r[i].hi && r[i + 1].lo);
    EXPECT_EQ(*r[i].hi, *r[i + 1].lo);  // no gap, no overlap
  }
  EXPECT_EQ(*r[0].hi, "12800");
  EXPECT_EQ(r[3].est_bytes, 100 * kMiB);
}

TEST(Copy, SmallTablesAreOneRange) {
  auto r = SplitByPages("s", "t", 12 * kMiB, 1536, 10 * kMiB);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].kind, CopyRange::Kind::kAll);
  EXPECT_EQ(r[0].est_bytes, 12 * kMiB);
  // Never more pieces than pages.
  EXPECT_EQ(SplitByPages("s", "t", 100 * kMiB, 3, kMiB).size(), 3u);
}

TEST(Copy, KeyRangesAreHalfOpenBetweenBounds) {
  auto r = SplitByKey("s", "t", 300, "id", {"100", "200"});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_FALSE(r[0].lo.has_value());
  EXPECT_EQ(*r[0].hi, "100");
  EXPECT_EQ(*r[1].lo, "100");
  EXPECT_EQ(*r[1].hi, "200");
  EXPECT_EQ(*r[2].lo, "200");
  EXPECT_FALSE(r[2].hi.has_value());
  EXPECT_EQ(r[1].key_column, "id");
  EXPECT_EQ(r[1].est_bytes, 100);
  auto one = SplitByKey("s", "t", 300, "id", {});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].kind, CopyRange::Kind::kAll);
}

TEST(Copy, PlanIsDoneWhenEveryRangeIs) {
  CopyPlan p;
  p.snapshot = "x";
  p.ranges.resize(2);
  EXPECT_FALSE(p.AllDone());
  p.ranges[0].done = p.ranges[1].done = true;
  EXPECT_TRUE(p.AllDone());
  EXPECT_TRUE(CopyPlan{}.empty());
}

TEST(Copy, RateLimiterSpacesChunksAndKeepsNoCredit) {
  RateLimiter r(1 << 20);  // 1 MiB/s
  EXPECT_EQ(r.Reserve(512 << 10, 1000), 1000);
  EXPECT_EQ(r.Reserve(512 << 10, 1000), 1000 + 500000);   // after the first half MiB
  EXPECT_EQ(r.Reserve(1 << 20, 2000), 1000 + 1000000);    // queued behind both
  EXPECT_EQ(r.Reserve(1, 10'000'000), 10'000'000);        // an idle spell earns no burst
  RateLimiter none(0);
  EXPECT_EQ(none.Reserve(1 << 30, 7), 7);
}

}  // namespace
}  // namespace pgshift::engine
