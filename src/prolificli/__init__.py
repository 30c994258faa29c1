"""prolificli: text-to-3D by score distillation (VSD, L2-VSD, SDS) as a staged command-line tool."""

__version__ = "0.1.0"
