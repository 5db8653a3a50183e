// Durations given on the command line (--max-runtime, --expected-uptime).
#pragma once

#include <chrono>
#include <string>

namespace dreamlora {

// "90s", "30m", "2h", "1h30m", "1d2h", "1.5h", or a bare number of seconds. Error naming `flag`
// for anything else, or a duration that is not positive.
std::chrono::seconds parse_duration(const std::string& text, const std::string& flag = "--max-runtime");

}  // namespace dreamlora
