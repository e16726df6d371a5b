// Declarations of the ops registered in torch_binding.cpp.
#pragma once

#include "csrc/cpu/flash_fwd_cpu.h"
