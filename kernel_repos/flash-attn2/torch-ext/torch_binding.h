// Declarations of the ops registered in torch_binding.cpp.
#pragma once

#include "cpu/flash_fwd_cpu.h"
