/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * How a map is declared: one macro per kind, taking the map's name (user
 * space opens maps by that name), its key and value types and its size. The
 * BTF each one produces is libbpf's usual map definition.
 */
#ifndef KLOAK_MAPDEFS_H
#define KLOAK_MAPDEFS_H

/* A keyed map of kind `type` (BPF_MAP_TYPE_*) with max_entries entries;
 * `more`: further fields, each with its own `;` (map_flags, say). */
#define KLOAK_MAP_WITH(type_, name, key_t, value_t, entries, more) \
	struct {                                                   \
		__uint(type, type_);                               \
		__uint(max_entries, entries);                      \
		more                                               \
		__type(key, key_t);                                \
		__type(value, value_t);                            \
	} name SEC(".maps")

#define KLOAK_MAP(type_, name, key_t, value_t, entries) KLOAK_MAP_WITH(type_, name, key_t, value_t, entries, )

/* Preallocated: for maps written on every TLS call. */
#define KLOAK_HASH(name, key_t, value_t, entries) KLOAK_MAP(BPF_MAP_TYPE_HASH, name, key_t, value_t, entries)

/* Entries allocated as they are used (BPF_F_NO_PREALLOC; why: maps.h). */
#define KLOAK_HASH_ON_USE(name, key_t, value_t, entries) \
	KLOAK_MAP_WITH(BPF_MAP_TYPE_HASH, name, key_t, value_t, entries, __uint(map_flags, BPF_F_NO_PREALLOC);)

#define KLOAK_LRU_HASH(name, key_t, value_t, entries) KLOAK_MAP(BPF_MAP_TYPE_LRU_HASH, name, key_t, value_t, entries)

/* Arrays are indexed by a __u32. */
#define KLOAK_ARRAY(name, value_t, entries) KLOAK_MAP(BPF_MAP_TYPE_ARRAY, name, __u32, value_t, entries)
#define KLOAK_PERCPU_ARRAY(name, value_t, entries) KLOAK_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, name, __u32, value_t, entries)

/* A ring buffer of `bytes` bytes. */
#define KLOAK_RINGBUF(name, bytes)                 \
	struct {                                   \
		__uint(type, BPF_MAP_TYPE_RINGBUF); \
		__uint(max_entries, bytes);        \
	} name SEC(".maps")

#endif /* KLOAK_MAPDEFS_H */
