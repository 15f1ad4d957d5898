#include "k8s/backoff.h"

#include <gtest/gtest.h>

namespace pgshift::k8s {
namespace {

using std::chrono::milliseconds;

TEST(BackoffTest, GrowsToTheCapWithoutJitter) {
  Backoff b(milliseconds(100), milliseconds(1000), 2.0, 0.0, 1);
  EXPECT_EQ(b.Next(), milliseconds(100));
  EXPECT_EQ(b.Next(), milliseconds(200));
  EXPECT_EQ(b.Next(), milliseconds(400));
  EXPECT_EQ(b.Next(), milliseconds(800));
  EXPECT_EQ(b.Next(), milliseconds(1000));
  EXPECT_EQ(b.Next(), milliseconds(1000));
  b.Reset();
  EXPECT_EQ(b.Next(), milliseconds(100));
}

TEST(BackoffTest, JitterStaysInItsBandAndUnderTheCap) {
  Backoff b(milliseconds(1000), milliseconds(1100), 1.0, 0.2, 42);
  bool varied = false;
  Duration first = b.Next();
  for (int i = 0; i < 200; ++i) {
    Duration d = b.Next();
    EXPECT_GE(d, milliseconds(800));
    EXPECT_LE(d, milliseconds(1100));
    varied |= d != first;
  }
  EXPECT_TRUE(varied);
}

TEST(ItemBackoffTest, PerKeyExponentialAndForget) {
  ItemBackoff b(milliseconds(5), milliseconds(50));
  EXPECT_EQ(b.When("a"), milliseconds(5));
  EXPECT_EQ(b.When("a"), milliseconds(10));
  EXPECT_EQ(b.When("b"), milliseconds(5));  // keys are independent
  EXPECT_EQ(b.When("a"), milliseconds(20));
  EXPECT_EQ(b.When("a"), milliseconds(40));
  EXPECT_EQ(b.When("a"), milliseconds(50));
  for (int i = 0; i < 100; ++i) (void)b.When("a");  // no overflow
  EXPECT_EQ(b.When("a"), milliseconds(50));
  EXPECT_EQ(b.NumRequeues("b"), 1);
  b.Forget("a");
  EXPECT_EQ(b.NumRequeues("a"), 0);
  EXPECT_EQ(b.When("a"), milliseconds(5));
}

}  // namespace
}  // namespace pgshift::k8s
