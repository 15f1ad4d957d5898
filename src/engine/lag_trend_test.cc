#include "engine/lag_trend.h"

#include <gtest/gtest.h>

#include "common/strings.h"

namespace pgshift::engine {
namespace {

constexpr double kMB = 1024.0 * 1024.0;

TEST(LagTrend, UnknownUntilTheSamplesSpanEnough) {
  LagTrend t(30000, 3000);
  EXPECT_FALSE(t.Estimate(16 * kMB).ready_in_s.has_value());
  t.Add(0, 500 * kMB);
  t.Add(1000, 490 * kMB);
  t.Add(2000, 480 * kMB);
  LagEstimate e = t.Estimate(16 * kMB);
  EXPECT_FALSE(e.drain_bytes_per_s.has_value());
  EXPECT_FALSE(e.ready_in_s.has_value());
  EXPECT_EQ(e.Describe(), "");
}

TEST(LagTrend, SteadyDrainGivesTheTimeToTheThreshold) {
  LagTrend t;
  // 10 MB/s net, from 500 MB: the threshold of 100 MB is (460 - 100) / 10 = 36 s past the last.
  for (int i = 0; i <= 4; ++i) t.Add(i * 1000, (500 - 10 * i) * kMB);
  LagEstimate e = t.Estimate(100 * kMB);
  ASSERT_TRUE(e.drain_bytes_per_s.has_value());
  EXPECT_NEAR(*e.drain_bytes_per_s, 10 * kMB, 1);
  ASSERT_TRUE(e.ready_in_s.has_value());
  EXPECT_NEAR(*e.ready_in_s, 36.0, 1e-6);
  EXPECT_FALSE(e.stalled);
  EXPECT_EQ(e.Describe(), "ready in ~36 s (lag falls 10.0 MB/s)");
}

TEST(LagTrend, NoiseIsAveragedByTheFit) {
  LagTrend t;
  // -5 MB/s with +-3 MB of alternating noise: the fit stays near 5 MB/s.
  for (int i = 0; i <= 20; ++i) t.Add(i * 1000, (400 - 5 * i + (i % 2 ? 3 : -3)) * kMB);
  LagEstimate e = t.Estimate(16 * kMB);
  ASSERT_TRUE(e.drain_bytes_per_s.has_value());
  EXPECT_NEAR(*e.drain_bytes_per_s / kMB, 5.0, 0.5);
}

TEST(LagTrend, AGrowingLagIsStalledWithNoEstimate) {
  LagTrend t;
  for (int i = 0; i <= 5; ++i) t.Add(i * 1000, (200 + 2 * i) * kMB);
  LagEstimate e = t.Estimate(16 * kMB);
  EXPECT_TRUE(e.stalled);
  EXPECT_FALSE(e.ready_in_s.has_value());
  EXPECT_LT(*e.drain_bytes_per_s, 0);
  EXPECT_EQ(e.Describe(), "lag not falling (+2.0 MB/s): the target does not keep up");
}

TEST(LagTrend, ALagThatWouldTakeOverADayIsNotFalling) {
  LagTrend t;
  // 655 MB falling by a few bytes a second (noise on a flat lag): no "ready in ~10^12 h".
  for (int i = 0; i <= 5; ++i) t.Add(i * 1000, 655 * kMB - 3 * i);
  LagEstimate e = t.Estimate(16 * kMB);
  EXPECT_TRUE(e.stalled);
  EXPECT_FALSE(e.ready_in_s.has_value());
  EXPECT_EQ(e.Describe().rfind("lag not falling", 0), 0u) << e.Describe();
}

TEST(LagTrend, UnderTheThresholdIsReadyNow) {
  LagTrend t;
  t.Add(0, 1 * kMB);
  LagEstimate e = t.Estimate(16 * kMB);
  EXPECT_EQ(e.ready_in_s, 0.0);
  EXPECT_EQ(e.Describe(), "lag under the cutover threshold");
  for (int i = 1; i <= 5; ++i) t.Add(i * 1000, (1 + i) * kMB);  // growing, still under
  e = t.Estimate(16 * kMB);
  EXPECT_EQ(e.ready_in_s, 0.0);
  EXPECT_FALSE(e.stalled);
}

TEST(LagTrend, OldSamplesLeaveTheWindowSoAChangeOfPaceShows) {
  LagTrend t(10000, 3000);
  for (int i = 0; i <= 20; ++i) t.Add(i * 1000, (1000 - 1 * i) * kMB);          // 1 MB/s
  for (int i = 21; i <= 40; ++i) t.Add(i * 1000, (980 - 20 * (i - 20)) * kMB);  // 20 MB/s
  LagEstimate e = t.Estimate(0);
  EXPECT_NEAR(*e.drain_bytes_per_s / kMB, 20.0, 0.01);
}

TEST(FormatDurationShort, RoundsForPeople) {
  EXPECT_EQ(FormatDurationShort(0), "0 s");
  EXPECT_EQ(FormatDurationShort(39.6), "40 s");
  EXPECT_EQ(FormatDurationShort(0.3), "1 s");  // not done yet: never "0 s"
  EXPECT_EQ(FormatDurationShort(430), "7 min");
  EXPECT_EQ(FormatDurationShort(7500), "2 h 5 min");
  EXPECT_EQ(FormatDurationShort(-3), "0 s");
}

}  // namespace
}  // namespace pgshift::engine
