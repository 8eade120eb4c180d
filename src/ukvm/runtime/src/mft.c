/* mft.c: device lookup in the tender's copy of the manifest. */
#include "runtime.h"

static const struct mft *manifest;

void mft_init(const struct mft *mft)
{
    manifest = mft;
}

struct mft_entry *mft_lookup(const char *name, enum mft_type type, solo5_handle_t *handle)
{
    for (uint32_t i = 0; manifest && i < manifest->entries; i++) {
        const struct mft_entry *e = &manifest->e[i];
        if (e->type == type && rt_strncmp(e->name, name, MFT_NAME_SIZE) == 0) {
            *handle = i;
            return (struct mft_entry *)e;
        }
    }
    return 0;
}

struct mft_entry *mft_by_handle(solo5_handle_t handle, enum mft_type type)
{
    if (!manifest || handle >= manifest->entries || manifest->e[handle].type != type)
        return 0;
    return (struct mft_entry *)&manifest->e[handle];
}
