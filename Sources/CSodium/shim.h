#ifndef AGENTMESH_CSODIUM_SHIM_H
#define AGENTMESH_CSODIUM_SHIM_H
#include <sodium.h>
#endif
