// Durable file operations: data reaches the disk before a name points at it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

namespace dreamlora::io {

// Writes bytes to path via a temp sibling, fsync, rename, fsync of the parent directory.
void write_file_durably(const std::filesystem::path& path, std::string_view bytes);
// Temp sibling + rename without fsync: readers never see a half-written file, but a crash may lose
// it. For derived files that are rewritten anyway (the loss curve), where an fsync would stall.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);
// fsync an existing file or directory; throws with the path and errno text on failure.
void fsync_path(const std::filesystem::path& path);
std::string read_file(const std::filesystem::path& path);

// The write(2), fsync(2) and rename(2) that every durable write goes through (here and in the
// checkpoint store), so that a test can make the n-th call fail. Same contract as the system calls.
namespace sys {
ssize_t write(int fd, const void* data, size_t size);
int fsync(int fd);
int rename(const char* from, const char* to);
}  // namespace sys

// TEST ONLY: fault injection in the sys:: wrappers above. The environment variable
//   DREAMLORA_TEST_FAULT=<op>[:<errno>]:<n>[,<op>[:<errno>]:<n>...]     e.g. fsync:3, rename:EIO:2,
//                                                                        write:ENOSPC:5
// is read once, at the first wrapper call of the process: the n-th call (1-based, counted per op since
// then or since the last set_test_faults()) of <op> (write, fsync, rename) fails with errno (ENOSPC,
// EIO, EACCES, EFBIG, EDQUOT, EROFS or a number; default EIO, ENOSPC for write) without doing anything.
// Unarmed, a wrapper costs one relaxed atomic load.
// set_test_faults() arms the same spec from a test ("" disarms) and restarts the counts.
void set_test_faults(const std::string& spec);

}  // namespace dreamlora::io
