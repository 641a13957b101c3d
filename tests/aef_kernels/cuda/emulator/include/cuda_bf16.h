// The emulator stands in for the CUDA header of this name.
#pragma once
#include "aef_emu.h"
