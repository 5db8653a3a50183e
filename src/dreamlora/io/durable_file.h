// Durable file operations: data reaches the disk before a name points at it.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace dreamlora {

// Writes bytes to path via a temp sibling, fsync, rename, fsync of the parent directory.
void write_file_durably(const std::filesystem::path& path, std::string_view bytes);
// Temp sibling + rename without fsync: readers never see a half-written file, but a crash may lose
// it. For derived files that are rewritten anyway (the loss curve), where an fsync would stall.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);
// fsync an existing file or directory; throws with the path and errno text on failure.
void fsync_path(const std::filesystem::path& path);
std::string read_file(const std::filesystem::path& path);

}  // namespace dreamlora
