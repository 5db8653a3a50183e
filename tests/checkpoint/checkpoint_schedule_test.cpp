// CheckpointSchedule: flag parsing, step and minute triggers (on an injected clock), the Young/Daly
// arithmetic and its clamping, and the auto interval's re-estimation after measured saves.
#include "dreamlora/checkpoint/checkpoint_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::checkpoint {

using dreamlora::testing::error_of;
namespace {

// A schedule on a fake clock whose steps advance the clock by their own duration.
struct Harness {
  double now = 1000;
  std::vector<std::string> log;
  CheckpointSchedule schedule;

  explicit Harness(CheckpointScheduleOptions o)
      : schedule(std::move(o), [this] { return now; }, [this](const std::string& l) { log.push_back(l); }) {}

  // Runs steps first..last of `seconds` each; returns the steps at which a checkpoint was due (and
  // "saves" it with the given stall).
  std::vector<int64_t> run(int64_t first, int64_t last, double seconds, double stall = 0) {
    std::vector<int64_t> saved;
    for (int64_t s = first; s <= last; ++s) {
      now += seconds;
      schedule.on_step(s, seconds);
      if (schedule.due(s)) {
        saved.push_back(s);
        now += stall;
        schedule.on_checkpoint(s, stall);
      }
    }
    return saved;
  }
};

TEST(CheckpointScheduleOptions, ParsesStepsAutoMinutesAndUptime) {
  auto o = CheckpointScheduleOptions::parse("250", 0, "");
  EXPECT_EQ(o.every_steps.value_or(-1), 250);
  EXPECT_FALSE(o.auto_steps);
  EXPECT_DOUBLE_EQ(o.expected_uptime_s, 7200);
  EXPECT_TRUE(o.any_trigger());

  o = CheckpointScheduleOptions::parse("auto", 15, "3h");
  EXPECT_TRUE(o.auto_steps);
  EXPECT_FALSE(o.every_steps);
  EXPECT_DOUBLE_EQ(o.every_minutes, 15);
  EXPECT_DOUBLE_EQ(o.expected_uptime_s, 10800);

  o = CheckpointScheduleOptions::parse("0", 0, "");
  EXPECT_FALSE(o.every_steps);
  EXPECT_FALSE(o.any_trigger());
  EXPECT_TRUE(CheckpointScheduleOptions::parse("", 0.5, "").any_trigger());
}

TEST(CheckpointScheduleOptions, BadValuesNameTheirFlag) {
  for (const char* bad : {"-3", "12x", "Auto", "1e3", " 5"})
    EXPECT_NE(error_of([&] { CheckpointScheduleOptions::parse(bad, 0, ""); }).find("--checkpointing-steps"),
              std::string::npos)
        << bad;
  EXPECT_NE(error_of([] { CheckpointScheduleOptions::parse("10", -1, ""); }).find("--checkpointing-minutes"),
            std::string::npos);
  EXPECT_NE(error_of([] { CheckpointScheduleOptions::parse("10", NAN, ""); }).find("--checkpointing-minutes"),
            std::string::npos);
  EXPECT_NE(error_of([] { CheckpointScheduleOptions::parse("auto", 0, "soon"); }).find("--expected-uptime"),
            std::string::npos);
}

TEST(YoungDaly, IsSqrtOfTwiceCostTimesMtbf) {
  EXPECT_NEAR(young_daly_interval_seconds(2, 7200), std::sqrt(28800.0), 1e-9);
  EXPECT_NEAR(young_daly_interval_seconds(2, 7200), 169.706, 1e-3);
  EXPECT_NEAR(young_daly_interval_seconds(0.5, 86400), 293.939, 1e-3);
  EXPECT_EQ(young_daly_interval_seconds(0, 7200), 0);
  EXPECT_EQ(young_daly_interval_seconds(2, 0), 0);
}

TEST(YoungDaly, AutoIntervalInStepsIsClampedToTenSecondsAndThirtyMinutesOfWorkAndNumSteps) {
  CheckpointScheduleOptions o;                                             // MTBF 2 h, 10 s .. 30 min
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 2, 0.5), 340);      // 169.7 s / 0.5 s, rounded up
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 0.001, 0.5), 20);   // 3.8 s -> 10 s minimum
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 1000, 0.5), 3600);  // 3795 s -> 1800 s maximum
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 2, 60), 3);         // 169.7 s / 60 s per step
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 0.001, 60), 1);     // never below one step
  o.num_steps = 100;
  EXPECT_EQ(CheckpointSchedule::auto_interval_steps(o, 2, 0.5), 100);  // never beyond the run
}

TEST(CheckpointSchedule, FixedStepsFireOnMultiplesOfN) {
  Harness h(CheckpointScheduleOptions::parse("5", 0, ""));
  EXPECT_EQ(h.run(1, 17, 1.0), (std::vector<int64_t>{5, 10, 15}));
  EXPECT_EQ(h.schedule.current_interval_steps(), 5);
  EXPECT_TRUE(h.log.empty());
}

TEST(CheckpointSchedule, ResumedRunKeepsTheMultiplesAndDoesNotSaveItsFirstStepAgain) {
  Harness h(CheckpointScheduleOptions::parse("5", 0, ""));
  EXPECT_EQ(h.run(11, 20, 1.0), (std::vector<int64_t>{15, 20}));
}

TEST(CheckpointSchedule, MinutesTriggerFiresOnWallTimeAndRestartsAtEachCheckpoint) {
  Harness h(CheckpointScheduleOptions::parse("", 1, ""));  // every minute
  // 7 s steps: 60 s elapse during step 9 (63 s); the timer restarts there, next at step 18.
  EXPECT_EQ(h.run(1, 20, 7.0), (std::vector<int64_t>{9, 18}));
  // An unscheduled checkpoint (e.g. on a stop signal) restarts the timer too.
  h.now += 30;
  h.schedule.on_checkpoint(20, 0);
  EXPECT_EQ(h.run(21, 29, 7.0), (std::vector<int64_t>{29}));
}

TEST(CheckpointSchedule, StepsAndMinutesWhicheverComesFirst) {
  Harness h(CheckpointScheduleOptions::parse("10", 0.5, ""));  // 10 steps or 30 s
  // Fast steps (2 s): the multiples of 10 come before 30 s have passed.
  EXPECT_EQ(h.run(1, 20, 2.0), (std::vector<int64_t>{10, 20}));
  // Slow steps: the clock wins (6 s steps: 30 s after step 20 is step 25).
  EXPECT_EQ(h.run(21, 30, 6.0), (std::vector<int64_t>{25, 30}));
}

TEST(CheckpointSchedule, MinutesTimerStartsAtTheFirstStepNotAtConstruction) {
  Harness h(CheckpointScheduleOptions::parse("", 1, ""));
  h.now += 3600;  // model loading, data caching
  EXPECT_EQ(h.run(1, 5, 10.0), (std::vector<int64_t>{}));
}

TEST(CheckpointSchedule, AutoMeasuresAFirstCheckpointThenFollowsYoungDaly) {
  Harness h(CheckpointScheduleOptions::parse("auto", 0, "2h"));
  // 0.5 s steps: the provisional interval is 10 s of work = 20 steps.
  auto saved = h.run(1, 20, 0.5, /*stall=*/2.0);
  EXPECT_EQ(saved, (std::vector<int64_t>{20}));
  // C = 2 s, MTBF = 7200 s -> 169.7 s -> 340 steps.
  EXPECT_EQ(h.schedule.current_interval_steps(), 340);
  EXPECT_DOUBLE_EQ(h.schedule.estimated_cost_seconds(), 2.0);
  ASSERT_EQ(h.log.size(), 2u);
  EXPECT_NE(h.log[0].find("every 20 steps"), std::string::npos) << h.log[0];
  EXPECT_NE(h.log[1].find("every 340 steps"), std::string::npos) << h.log[1];
  EXPECT_NE(h.log[1].find("2.00 h"), std::string::npos) << h.log[1];
  EXPECT_EQ(h.run(21, 700, 0.5, 2.0), (std::vector<int64_t>{360, 700}));
  EXPECT_EQ(h.log.size(), 2u) << "an unchanged interval is not logged again";
}

TEST(CheckpointSchedule, AutoReestimatesAfterEverySaveWithSmoothedCost) {
  Harness h(CheckpointScheduleOptions::parse("auto", 0, "2h"));
  h.run(1, 20, 0.5, 2.0);
  ASSERT_EQ(h.schedule.current_interval_steps(), 340);
  // A slower save (8 s): the estimate moves half way, C = 5 s -> sqrt(72000) = 268.3 s -> 537 steps.
  h.now += 8;
  h.schedule.on_checkpoint(21, 8.0);
  EXPECT_DOUBLE_EQ(h.schedule.estimated_cost_seconds(), 5.0);
  EXPECT_EQ(h.schedule.current_interval_steps(), 537);
  EXPECT_EQ(h.log.size(), 3u);
  EXPECT_NE(h.log.back().find("every 537 steps"), std::string::npos) << h.log.back();
}

TEST(CheckpointSchedule, AutoCountsAShareOfTheBackgroundWriteAsCost) {
  Harness h(CheckpointScheduleOptions::parse("auto", 0, "2h"));
  h.run(1, 3, 0.5);
  h.schedule.on_checkpoint(3, 1.0, 10.0);  // 1 s stall + 0.1 x 10 s write
  EXPECT_DOUBLE_EQ(h.schedule.estimated_cost_seconds(), 2.0);
  EXPECT_EQ(h.schedule.current_interval_steps(), 340);
}

TEST(CheckpointSchedule, AutoIsBoundedByNumStepsAndByThirtyMinutesOfWork) {
  auto o = CheckpointScheduleOptions::parse("auto", 0, "30d");
  Harness h(o);
  h.run(1, 20, 0.5, 60.0);  // C = 60 s, MTBF 30 d -> 4.9 h -> 30 min of work = 3600 steps
  EXPECT_EQ(h.schedule.current_interval_steps(), 3600);
  EXPECT_NE(h.log.back().find("lowered to the maximum"), std::string::npos) << h.log.back();
  o.num_steps = 1000;
  Harness bounded(o);
  bounded.run(1, 20, 0.5, 60.0);
  EXPECT_EQ(bounded.schedule.current_interval_steps(), 1000);
}

TEST(CheckpointSchedule, FirstStepWarmUpDoesNotSkewTheStepTime) {
  Harness h(CheckpointScheduleOptions::parse("auto", 0, "2h"));
  h.now += 30;
  h.schedule.on_step(1, 30.0);  // warm-up
  h.run(2, 5, 0.5);
  EXPECT_DOUBLE_EQ(h.schedule.mean_step_seconds(), 0.5);
}

TEST(CheckpointSchedule, NothingIsDueWithoutATrigger) {
  Harness h(CheckpointScheduleOptions::parse("0", 0, ""));
  EXPECT_TRUE(h.run(1, 1000, 10.0).empty());
  EXPECT_EQ(h.schedule.current_interval_steps(), 0);
}

}  // namespace
}  // namespace dreamlora::checkpoint
