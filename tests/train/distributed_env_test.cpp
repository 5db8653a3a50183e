// The pieces of data-parallel set-up that need no second process: which GPU a worker takes, which
// address Gloo binds to, and the torchrun variables read with errors that name them.
#include <cstdlib>

#include "dreamlora/common/error.h"
#include "dreamlora/train/distributed.h"
#include "test_util.h"

using dreamlora::train::DistributedEnv;

TEST(DistributedEnv, PlainCudaBecomesTheLocalRanksDeviceOnlyInADataParallelRun) {
  DistributedEnv env;
  env.world_size = 4;
  env.rank = 3;
  env.local_rank = 1;
  EXPECT_EQ(dreamlora::train::worker_device("cuda", env), "cuda:1");
  EXPECT_EQ(dreamlora::train::worker_device("cuda:0", env), "cuda:0");  // an explicit choice is kept
  EXPECT_EQ(dreamlora::train::worker_device("cpu", env), "cpu");
  env.world_size = 1;
  EXPECT_EQ(dreamlora::train::worker_device("cuda", env), "cuda");
}

TEST(DistributedEnv, GlooAddressIsTheSourceOfTheRouteToTheMaster) {
  EXPECT_EQ(dreamlora::train::local_address_towards("127.0.0.1"), "127.0.0.1");
  EXPECT_EQ(dreamlora::train::local_address_towards("no-such-host.invalid"), "");
}

TEST(DistributedEnv, MalformedVariableIsNamed) {
  setenv("WORLD_SIZE", "two", 1);
  try {
    DistributedEnv::from_environment();
    ADD_FAILURE() << "WORLD_SIZE=two was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("WORLD_SIZE"), std::string::npos) << e.what();
  }
  setenv("WORLD_SIZE", "2", 1);
  setenv("RANK", "2", 1);
  EXPECT_THROW(DistributedEnv::from_environment(), std::exception);
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
}
