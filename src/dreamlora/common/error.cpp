#include "dreamlora/common/error.h"

namespace dreamlora {

void fail(const std::string& message) {
  throw Error(message);
}

}  // namespace dreamlora
