"""Pure domain: values in, values out. No I/O and no imports from the rest of bookiji."""
