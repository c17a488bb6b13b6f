#!/bin/sh
# Writes a genimage config for the same disk `bench/assemble.rs` builds with
# piha: GPT, FAT32 ESP holding every file of INPUT_DIR/esp, FAT PIHA-CFG
# holding every file of INPUT_DIR/cfg, ext4 root of ROOT_SIZE bytes, every
# partition 1 MiB aligned. genimage's --inputpath must be INPUT_DIR.
#
# The ext4 is made with the same mke2fs options piha uses (features, inode
# count, UUID, hash seed, lazy init), so both tools ask mke2fs for the same
# filesystem; the difference measured is everything around it.
#
# usage: make-config.sh INPUT_DIR ESP_SIZE CFG_SIZE ROOT_SIZE ROOT_INODES ROOT_UUID > genimage.cfg
set -eu
input=$1 esp_size=$2 cfg_size=$3 root_size=$4 root_inodes=$5 root_uuid=$6

# genimage `file` lines for every file under INPUT_DIR/$1. (A vfat section
# with none would copy the whole root tree instead.)
files() {
  (cd "$input/$1" && find . -type f | sed 's|^\./||' | sort) | while read -r f; do
    printf '    file %s { image = "%s/%s" }\n' "$f" "$1" "$f"
  done
}

features=none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,64bit,metadata_csum

cat <<CFG
image esp.vfat {
  vfat {
    label = "ESP"
    extraargs = "-F 32"
$(files esp)
  }
  size = $esp_size
}

image piha-cfg.vfat {
  vfat {
    label = "PIHA-CFG"
$(files cfg)
  }
  size = $cfg_size
}

image root.ext4 {
  ext4 {
    use-mke2fs = true
    label = "piha-root"
    # mke2fs keeps the last -E and adds up -O: these replace genimage's own.
    extraargs = "-T default -b 4096 -I 256 -N $root_inodes -m 5 -O $features -U $root_uuid -E root_owner=0:0,hash_seed=$root_uuid,nodiscard,lazy_itable_init=1,lazy_journal_init=1"
  }
  size = $root_size
}

image disk.img {
  hdimage {
    partition-table-type = "gpt"
    align = 1M
  }
  partition ESP {
    image = "esp.vfat"
    partition-type-uuid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
  }
  partition PIHA-CFG {
    image = "piha-cfg.vfat"
    partition-type-uuid = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
  }
  partition piha-root {
    image = "root.ext4"
    partition-type-uuid = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
  }
}
CFG
