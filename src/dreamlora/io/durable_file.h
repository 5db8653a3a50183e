// Durable file operations: data reaches the disk before a name points at it.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace dreamlora {

// Writes bytes to path via a temp sibling, fsync, rename, fsync of the parent directory.
void write_file_durably(const std::filesystem::path& path, std::string_view bytes);
// fsync an existing file or directory; throws with the path and errno text on failure.
void fsync_path(const std::filesystem::path& path);
std::string read_file(const std::filesystem::path& path);

}  // namespace dreamlora
