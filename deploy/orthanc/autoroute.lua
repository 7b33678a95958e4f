-- Orthanc: send every stable CT series to chest-ct-triage (the DICOM modality "triage").
-- Our results (SEG, SR, secondary-capture overlays) are not CT, so they are never sent back.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    SendToModality(seriesId, 'triage')
  end
end
