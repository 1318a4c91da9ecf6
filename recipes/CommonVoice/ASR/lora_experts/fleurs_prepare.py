"""FLEURS preparation for this recipe (SpeechBrain layout).

Thin entry point; the logic lives in ``speechbrain_lora_experts.data.fleurs``:

    python fleurs_prepare.py <fleurs_root> <save_folder> de,es,it

Authors
 * speechbrain-lora-experts developers 2026
"""

import sys

from speechbrain_lora_experts.data.fleurs import prepare_fleurs

if __name__ == "__main__":
    data_folder, save_folder, languages = sys.argv[1:4]
    prepare_fleurs(data_folder, save_folder, languages.split(","))
