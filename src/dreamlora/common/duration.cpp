#include "dreamlora/common/duration.h"

#include <cctype>
#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora {

std::chrono::seconds parse_duration(const std::string& text, const std::string& flag) {
  auto bad = [&](const std::string& why) -> std::chrono::seconds {
    fail(str(flag, ": '", text, "' ", why, " (examples: 90s, 30m, 2h, 1h30m, 1d)"));
  };
  if (text.empty()) return bad("is empty");
  double total = 0;
  size_t i = 0;
  bool any_unit = false;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
    if (i == start) return bad("is not a duration");
    double value;
    try {
      size_t used = 0;
      value = std::stod(text.substr(start, i - start), &used);
      if (used != i - start) return bad("has a malformed number");
    } catch (const std::exception&) {
      return bad("has a malformed number");
    }
    if (i == text.size()) {
      if (any_unit) return bad("ends with a number without a unit");
      total += value;  // a bare number: seconds
      break;
    }
    double scale;
    switch (text[i]) {
      case 'd':
        scale = 86400;
        break;
      case 'h':
        scale = 3600;
        break;
      case 'm':
        scale = 60;
        break;
      case 's':
        scale = 1;
        break;
      default:
        return bad(str("has unknown unit '", text[i], "'"));
    }
    ++i;
    any_unit = true;
    total += value * scale;
  }
  if (!(total >= 1) || !std::isfinite(total)) return bad("must be at least one second");
  return std::chrono::seconds(static_cast<int64_t>(std::llround(total)));
}

}  // namespace dreamlora
