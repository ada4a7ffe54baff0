// <linux/kvm.h>, made layout-correct for C++.
//
// Debian 12's uapi headers (Linux 6.1) declare flexible array members with __DECLARE_FLEX_ARRAY,
// which wraps the array in a struct beside an empty struct. In C++ an empty struct has size 1, so
// sizeof(kvm_cpuid2) becomes 12 instead of 8: every ioctl number built from such a struct (_IOWR
// encodes the size) is wrong and KVM answers EINVAL, and the array sits at the wrong offset.
// Later kernels define the macro as a plain zero-length array for C++; do the same here.
#pragma once

#include <linux/stddef.h>

#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]

#include <linux/kvm.h>

static_assert(sizeof(kvm_cpuid2) == 8, "kvm_cpuid2 header must match the kernel ABI");
static_assert(sizeof(kvm_msrs) == 8, "kvm_msrs header must match the kernel ABI");
static_assert(sizeof(kvm_msr_list) == 4, "kvm_msr_list header must match the kernel ABI");
static_assert(sizeof(kvm_stats_desc) == 16, "kvm_stats_desc must match the kernel ABI");
static_assert(sizeof(kvm_xsave) == 4096, "kvm_xsave must match the kernel ABI");
static_assert(sizeof(kvm_dirty_gfn) == 16, "kvm_dirty_gfn must match the kernel ABI");
