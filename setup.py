from setuptools import setup

# Beam's --setup_file runs `python setup.py sdist` to ship this project to Dataflow/Flink/Spark
# workers; the metadata lives in pyproject.toml.
setup()
