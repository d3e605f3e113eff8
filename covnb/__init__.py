"""covnb: deep learning on COVID-19 lung ultrasound, chest X-ray and CT images, Jupyter first.

Modules follow the data flow: datasets -> frames -> splits -> backbones/models -> train ->
evaluate -> cam / fewshot -> report. See README.md.
"""

__version__ = "0.1.0"
