-- Orthanc: send every stable CT series to chest-ct-triage (the DICOM modality "triage"), as
-- one C-STORE association (an Orthanc job). Our results (SEG, SR, secondary-capture
-- overlays) are not CT, so they are never sent back.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    local request = { Resources = { seriesId }, Asynchronous = true }
    RestApiPost('/modalities/triage/store', DumpJson(request, true))
  end
end

-- A send that failed (chest-ct-triage restarting, upgrading, briefly down) is retried every
-- 2 s for 10 minutes instead of being dropped: Orthanc does not retry jobs by itself.
-- chest-ct-triage acknowledges an instance only once it is on disk, and a re-sent instance
-- it already holds is a duplicate, not a second study.
local attempts = {}
function OnJobFailure(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if job['Type'] ~= 'DicomModalityStore' or job['Content']['RemoteAet'] ~= 'CT_TRIAGE' then
    return
  end
  attempts[jobId] = (attempts[jobId] or 0) + 1
  if attempts[jobId] > 300 then
    print('chest-ct-triage: giving up job ' .. jobId .. ' after 300 attempts')
    return
  end
  os.execute('sleep 2')
  RestApiPost('/jobs/' .. jobId .. '/resubmit', '')
end
