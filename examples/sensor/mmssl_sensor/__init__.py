"""mmssl-sensor: a motion sensor (3-axis accelerometer) as an mmssl plugin.

    modality.py   SensorModality: .npy / .csv readers, a patch transformer encoder, and
                  the embedded world's motions (renderer, concept space, prompts)
    forecast.py   ForecastObjective: predict the last patches of a window from the rest
    recording.py  RecordingKind: windows cut from one long recording, as a data source

Nothing here is imported by mmssl: the entry points in pyproject.toml register all three.
"""
