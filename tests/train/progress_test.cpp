// The terminal progress lines: tqdm-like training line (step/total, it/s, ETA, loss, LR, checkpoint
// age) and the lines of class-image generation and validation.
#include "dreamlora/train/progress.h"

#include <gtest/gtest.h>

using namespace dreamlora;
using namespace dreamlora::train;

TEST(Progress, DurationsAreWrittenLikeTqdm) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(65), "1:05");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(-1), "?");
}

TEST(Progress, TrainingLineShowsStepRateEtaLossLrAndCheckpointAge) {
  TrainingProgressFields f;
  f.step = 120;
  f.total = 500;
  f.it_per_s = 3.214;
  f.eta_s = 118;
  f.loss = 0.123456;
  f.lr = 1e-4;
  f.checkpoint_age_s = 35;
  EXPECT_EQ(format_training_progress(f, 10),
            "[##........] 120/500  24% | 3.21 it/s | ETA 1:58 | loss 0.1235 | lr 1.00e-04 | ckpt 35s ago");
  f.checkpoint_age_s = -1;
  f.eta_s = -1;
  f.step = 500;
  EXPECT_EQ(format_training_progress(f, 4),
            "[####] 500/500 100% | 3.21 it/s | ETA ? | loss 0.1235 | lr 1.00e-04 | ckpt none yet");
}

TEST(Progress, TaskLineShowsDoneTotalRateAndEta) {
  EXPECT_EQ(format_task_progress("class images", 12, 100, 0.5, 10),
            "class images [#.........] 12/100 | 0.50 it/s | ETA 2:56");
  EXPECT_EQ(format_task_progress("validation images", 0, 20, 0, 4),
            "validation images [....] 0/20 | 0.00 it/s | ETA ?");
}
