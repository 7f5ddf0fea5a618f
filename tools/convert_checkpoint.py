"""Converts EfficientNet weights into the nst format; see nst/models/convert_cli.py.

    python tools/convert_checkpoint.py --model_name=efficientnet-b0 \
        --source=/ckpts/efficientnet-b0 --output_dir=/models/b0
"""

from nst.models import convert_cli

if __name__ == "__main__":
    convert_cli.run()
