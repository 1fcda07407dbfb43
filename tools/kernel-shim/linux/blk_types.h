/* SPDX-License-Identifier: GPL-2.0 */
#define SECTOR_SHIFT 9
