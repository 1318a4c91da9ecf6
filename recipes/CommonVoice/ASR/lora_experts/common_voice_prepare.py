"""Common Voice preparation for this recipe (SpeechBrain layout).

Thin entry point; the logic lives in
``speechbrain_lora_experts.data.common_voice``:

    python common_voice_prepare.py <cv_release> <save_folder> de,es,it

Authors
 * speechbrain-lora-experts developers 2026
"""

import sys

from speechbrain_lora_experts.data.common_voice import prepare_common_voice

if __name__ == "__main__":
    data_folder, save_folder, languages = sys.argv[1:4]
    prepare_common_voice(data_folder, save_folder, languages.split(","))
