"""INT8 quantisation (issue 23): calibration of activation ranges from the IR (calibrate.py)."""
