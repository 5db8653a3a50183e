// The trainer's progress lines on stderr ("dreamlora: ..."), shared by its pieces.
#pragma once

#include <iostream>
#include <string>

namespace dreamlora::train {

inline void train_log(const std::string& line) {
  std::cerr << "dreamlora: " << line << std::endl;
}

}  // namespace dreamlora::train
