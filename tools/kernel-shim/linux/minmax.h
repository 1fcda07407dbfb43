/* SPDX-License-Identifier: GPL-2.0 */
#ifndef CBT_SHIM_MINMAX_H
#define CBT_SHIM_MINMAX_H
#define min(a, b) ((a) < (b) ? (a) : (b))
#define min_t(t, a, b) min((t)(a), (t)(b))
#endif
