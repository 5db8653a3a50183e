// Writes large safetensors files tensor by tensor, without first serialising the whole file in memory
// (safetensors::save builds one string: twice the model in memory at its peak).
#pragma once

#include <filesystem>

#include "dreamlora/io/safetensors.h"

namespace dreamlora::io::safetensors {

// Same format as save() (tensors in name order); durable: temp file, fsync, rename, fsync the folder.
void save_streamed(const std::filesystem::path& path, const NamedTensors& tensors);

}  // namespace dreamlora::io::safetensors
