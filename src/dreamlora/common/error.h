// One error type for every user-facing failure, and the check helper that builds its message.
// Messages name what failed (file, key, flag), what was expected and what was found.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dreamlora {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& message);

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

// str(parts...) concatenates the parts with operator<< into one message. It is a function object, not
// a function, so argument-dependent lookup cannot pull in c10::str for tensor-related arguments.
struct StrFn {
  template <typename... Parts>
  std::string operator()(const Parts&... parts) const {
    std::ostringstream os;
    detail::append_all(os, parts...);
    return os.str();
  }
};
inline constexpr StrFn str{};

}  // namespace dreamlora

// DL_CHECK(cond, part, part, ...): throws dreamlora::Error with the parts joined when cond is false.
#define DL_CHECK(cond, ...)                                        \
  do {                                                             \
    if (!(cond)) ::dreamlora::fail(::dreamlora::str(__VA_ARGS__)); \
  } while (0)
